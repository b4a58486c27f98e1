//! Service catalogue: typed stacks deployed through Docker (a later issue fills this in).
