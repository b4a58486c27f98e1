//! Redis Sentinel: to be written.
