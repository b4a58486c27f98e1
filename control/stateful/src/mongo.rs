//! MongoDB replica sets: to be written.
