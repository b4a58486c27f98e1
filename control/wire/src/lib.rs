//! The cluster's wire format, shared by gossip, state pulls and Raft: the keyring, the
//! sealed envelope, the frame codec for the TCP ports, the protocol version, and the
//! admission limits of the TCP listeners.
//!
//! This crate knows nothing of gossip, Raft or what the messages mean.
//!
//! # Envelope
//!
//! Every cluster message is sealed with ChaCha20-Poly1305 under the first key of the
//! [`Keyring`]:
//!
//! ```text
//! [protocol version: 1][key id: 4][nonce: 12][ciphertext][tag: 16]
//! ```
//!
//! The associated data is the first five bytes followed by a context that is never sent
//! (empty for datagrams, a label for frame headers and bodies), so the version cannot be
//! altered and a part sealed for one place never opens in another. The nonce is random.
//! A gossip datagram is one envelope around a kind byte and its body.
//!
//! # Protocol version
//!
//! [`PROTOCOL_VERSION`] changes whenever any message changes meaning or layout (gossip,
//! state pulls, Raft, this envelope). The envelope itself is frozen, so a node can tell a
//! peer of another release from noise: a message whose version byte is not ours is still
//! authenticated, and if it opens it is refused as [`OpenError::OtherVersion`] (metric
//! reason `version`, and one rate-limited warning per peer from [`RejectLog`]); if not, it
//! is [`OpenError::BadVersion`]. Releases before protocol versions existed sealed their
//! datagrams with this same envelope under version 1, so they are recognised too.
//!
//! # Frames (TCP: state pulls on the cluster port, Raft on the cluster port + 1)
//!
//! ```text
//! header: envelope around the body length, u32 big-endian   (37 bytes, fixed)
//! body:   envelope around one postcard message             (length + 33 bytes)
//! ```
//!
//! The reader takes exactly [`FRAME_HEADER_LEN`] bytes into a stack buffer and
//! authenticates them before it believes the length; then it checks the length against
//! the codec's cap (per use: 4 MiB for state pulls, 16 MiB for Raft) and only then
//! allocates the body. A connection without the key therefore costs the server a fixed
//! 37 bytes, whatever length it claims. The body's associated data includes its header,
//! so bodies cannot be swapped between frames.
//!
//! # Serialisation
//!
//! Every message, gossip and Raft alike, is postcard. postcard is not self-describing:
//! it cannot carry untagged enums, `#[serde(flatten)]`, `skip_serializing_if` or anything
//! using `deserialize_any`. openraft 0.9's messages use none of these (only its
//! `compat` module, which we do not send, has an untagged enum), and the lease crate's
//! tests round-trip every Raft request and response through this codec to keep it so.
//!
//! # Admission
//!
//! [`admission::serve`] runs both TCP listeners with [`Limits`]: connections that have
//! not yet sent an authentic header are few (the oldest is evicted when the pool is full)
//! and short-lived (a handshake deadline), and the total is capped; see [`admission`].
//!
//! # Limits
//!
//! Messages are not protected against replay by someone who can record cluster traffic;
//! the mesh (e.g. Tailscale) is expected to keep that traffic private.

#![forbid(unsafe_code)]

pub mod admission;
mod frame;
mod keyring;
mod reject_log;
#[cfg(test)]
mod tests;

pub use admission::{AdmissionMetrics, Limits, Service};
pub use frame::{FrameCodec, FrameError, FRAME_HEADER_LEN, FRAME_OVERHEAD};
pub use keyring::{generate_key_hex, KeyProblem, Keyring, KeyringError, OpenError, KEY_LEN, SEAL_OVERHEAD};
pub use reject_log::{RejectLog, REJECT_LOG_EVERY};

/// The cluster protocol version, the first byte of every datagram and frame part. Bump it
/// whenever a message changes; version 1 was the unversioned format before it.
pub const PROTOCOL_VERSION: u8 = 2;
