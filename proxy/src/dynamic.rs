//! Traefik dynamic configuration model (STUB, being written).
