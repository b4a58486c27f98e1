//! The sealed-frame codec for the cluster's TCP ports (state pulls and Raft): an
//! authenticated fixed-size header carrying the body length, then the sealed body.
//!
//! The reader holds nothing but the header's fixed buffer until that header has
//! authenticated and its length has passed the cap; only then is the body allocated.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::keyring::{Keyring, OpenError, SEAL_OVERHEAD};

/// Bytes of a frame header on the wire: an envelope ([`SEAL_OVERHEAD`]) around the
/// body length (`u32`, big-endian).
pub const FRAME_HEADER_LEN: usize = SEAL_OVERHEAD + 4;
/// Bytes a frame adds to its message: the header and the body's envelope.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + SEAL_OVERHEAD;

/// Associated-data context of a frame header.
const HEADER_CONTEXT: &[u8] = b"constellation frame header";
/// Associated-data context of a frame body; the body's header bytes follow it.
const BODY_CONTEXT: &[u8] = b"constellation frame body";

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or ended inside a frame.
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The header or the body did not open with the keyring.
    #[error("frame does not open: {0}")]
    Open(#[from] OpenError),
    /// The authenticated header announces a body over this use's limit.
    #[error("frame body of {len} bytes is over the limit of {limit} bytes")]
    Oversize {
        /// Announced (or, when sending, actual) body length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The body opened but is not a message of the expected type.
    #[error("frame does not decode: {0}")]
    Decode(#[source] postcard::Error),
    /// A message of ours could not be encoded.
    #[error("cannot encode a message: {0}")]
    Encode(#[source] postcard::Error),
}

impl FrameError {
    /// Short label for metrics: `io`, `oversize`, `decode`, `encode`, or the
    /// [`OpenError::reason`].
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Io(_) => "io",
            FrameError::Open(e) => e.reason(),
            FrameError::Oversize { .. } => "oversize",
            FrameError::Decode(_) => "decode",
            FrameError::Encode(_) => "encode",
        }
    }

    /// True when the peer sent something that is not a valid frame (as opposed to a
    /// connection that failed or ended, or an error of ours).
    pub fn is_rejection(&self) -> bool {
        matches!(self, FrameError::Open(_) | FrameError::Oversize { .. } | FrameError::Decode(_))
    }
}

/// Encodes and decodes postcard messages as sealed frames, with one body limit. Cheap to
/// clone.
#[derive(Clone)]
pub struct FrameCodec {
    keyring: Arc<Keyring>,
    max_body: usize,
}

impl FrameCodec {
    /// A codec sealing with `keyring` that refuses bodies over `max_body` bytes, both
    /// ways (a peer never gets a frame it would refuse).
    pub fn new(keyring: Arc<Keyring>, max_body: usize) -> FrameCodec {
        FrameCodec { keyring, max_body: max_body.min(u32::MAX as usize) }
    }

    /// The body limit, in bytes.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// A sealed header announcing a body of `len` bytes. [`FrameCodec::encode`] uses it;
    /// tests use it to announce bodies that never come.
    pub fn seal_header(&self, len: u32) -> Vec<u8> {
        self.keyring.seal_with(HEADER_CONTEXT, &len.to_be_bytes())
    }

    /// `message` as one complete frame.
    pub fn encode<T: Serialize + ?Sized>(&self, message: &T) -> Result<Vec<u8>, FrameError> {
        let plain = postcard::to_allocvec(message).map_err(FrameError::Encode)?;
        let len = u32::try_from(plain.len())
            .ok()
            .filter(|len| *len as usize <= self.max_body)
            .ok_or(FrameError::Oversize { len: plain.len(), limit: self.max_body })?;
        let mut frame = self.seal_header(len);
        let body = self.keyring.seal_with(&body_context(&frame), &plain);
        frame.extend_from_slice(&body);
        Ok(frame)
    }

    /// The body length an authentic header announces, checked against the limit.
    /// Allocates nothing.
    pub fn open_header(&self, header: &[u8; FRAME_HEADER_LEN]) -> Result<usize, FrameError> {
        let mut copy = *header;
        let plain = self.keyring.open_in_place_with(HEADER_CONTEXT, &mut copy)?;
        let mut len = [0u8; 4];
        if plain.len() != len.len() {
            // Authentic, so ours, but not a header: a sealing bug, not an attack.
            return Err(FrameError::Open(OpenError::Forged));
        }
        len.copy_from_slice(plain);
        let len = u32::from_be_bytes(len) as usize;
        if len > self.max_body {
            return Err(FrameError::Oversize { len, limit: self.max_body });
        }
        Ok(len)
    }

    /// Opens and decodes a body (`len` from [`FrameCodec::open_header`] plus
    /// [`crate::SEAL_OVERHEAD`] bytes) read after `header`.
    pub fn open_body<T: DeserializeOwned>(
        &self,
        header: &[u8; FRAME_HEADER_LEN],
        body: &mut [u8],
    ) -> Result<T, FrameError> {
        let plain = self.keyring.open_in_place_with(&body_context(header), body)?;
        postcard::from_bytes(plain).map_err(FrameError::Decode)
    }

    /// Reads one frame. `Ok(None)` on a clean end of stream before its first byte.
    ///
    /// Reads exactly [`FRAME_HEADER_LEN`] bytes into a stack buffer and authenticates
    /// them; a header that does not open, or announces more than the limit, fails there,
    /// before any allocation. No timeout: wrap the call in one.
    pub async fn read<T, R>(&self, reader: &mut R) -> Result<Option<T>, FrameError>
    where
        T: DeserializeOwned,
        R: AsyncRead + Unpin,
    {
        match self.read_header(reader).await? {
            None => Ok(None),
            Some((header, len)) => self.read_body(reader, &header, len).await.map(Some),
        }
    }

    /// The first half of [`FrameCodec::read`]: reads and opens a header, returns it with
    /// the body length it announces. Allocates nothing.
    pub async fn read_header<R>(&self, reader: &mut R) -> Result<Option<([u8; FRAME_HEADER_LEN], usize)>, FrameError>
    where
        R: AsyncRead + Unpin,
    {
        let mut header = [0u8; FRAME_HEADER_LEN];
        let first = reader.read(&mut header).await?;
        if first == 0 {
            return Ok(None);
        }
        reader.read_exact(&mut header[first..]).await?;
        let len = self.open_header(&header)?;
        Ok(Some((header, len)))
    }

    /// The second half of [`FrameCodec::read`]: reads, opens and decodes the body of
    /// `len` bytes that `header` announced.
    pub async fn read_body<T, R>(
        &self,
        reader: &mut R,
        header: &[u8; FRAME_HEADER_LEN],
        len: usize,
    ) -> Result<T, FrameError>
    where
        T: DeserializeOwned,
        R: AsyncRead + Unpin,
    {
        if len > self.max_body {
            return Err(FrameError::Oversize { len, limit: self.max_body });
        }
        let mut body = vec![0u8; len + SEAL_OVERHEAD];
        reader.read_exact(&mut body).await?;
        self.open_body(header, &mut body)
    }

    /// Writes `message` as one frame and flushes.
    pub async fn write<T, W>(&self, writer: &mut W, message: &T) -> Result<(), FrameError>
    where
        T: Serialize + ?Sized,
        W: AsyncWrite + Unpin,
    {
        let frame = self.encode(message)?;
        writer.write_all(&frame).await?;
        writer.flush().await?;
        Ok(())
    }
}

/// Length of a body's associated-data context.
const BODY_CONTEXT_LEN: usize = BODY_CONTEXT.len() + FRAME_HEADER_LEN;

/// The body's context: the fixed label, then its header's bytes, so a body never opens
/// after another header. On the stack: nothing is allocated for it.
fn body_context(header: &[u8]) -> [u8; BODY_CONTEXT_LEN] {
    let mut context = [0u8; BODY_CONTEXT_LEN];
    let (label, rest) = context.split_at_mut(BODY_CONTEXT.len());
    label.copy_from_slice(BODY_CONTEXT);
    for (dst, src) in rest.iter_mut().zip(header) {
        *dst = *src;
    }
    context
}
