//! A small, strict TLS ClientHello reader: the server name (SNI) and the ALPN protocols a
//! client offers, read from the first TLS record before any handshake starts.
//!
//! It is a pure function on bytes so that the HTTPS entry points (to pick the options
//! and certificates for a name) and, later, SNI passthrough can share it. Anything that
//! is not a well-formed ClientHello in one record is an error, never a panic.

use std::fmt;

/// Length of a TLS record header (type, version, length).
pub const RECORD_HEADER_LEN: usize = 5;
/// The largest record body accepted (2^14 bytes of plaintext, RFC 8446 §5.1).
pub const MAX_RECORD_LEN: usize = 16_384;

/// What a client offers in its ClientHello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The `server_name` host name (lower-cased), when sent.
    pub server_name: Option<String>,
    /// ALPN protocol names in the client's order (empty when no ALPN extension).
    pub alpn: Vec<Vec<u8>>,
}

impl ClientHello {
    /// Whether the client offers `proto` over ALPN.
    pub fn offers(&self, proto: &[u8]) -> bool {
        self.alpn.iter().any(|p| p == proto)
    }
}

/// Why bytes are not a usable ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloError {
    /// The first record is not a handshake record (0x16): plain HTTP, garbage.
    NotHandshake,
    /// The record header's version or length is out of range.
    BadRecord,
    /// The handshake message is not a ClientHello.
    NotClientHello,
    /// The ClientHello continues in a later record (not supported).
    Fragmented,
    /// A length field runs past its container, or a field is malformed.
    Malformed,
}

impl HelloError {
    /// A short label for metrics (`reason`).
    pub fn label(self) -> &'static str {
        match self {
            HelloError::NotHandshake => "not_tls",
            HelloError::BadRecord => "bad_record",
            HelloError::NotClientHello => "not_client_hello",
            HelloError::Fragmented => "fragmented_hello",
            HelloError::Malformed => "malformed_hello",
        }
    }
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HelloError::NotHandshake => "not a TLS handshake record",
            HelloError::BadRecord => "TLS record header out of range",
            HelloError::NotClientHello => "handshake message is not a ClientHello",
            HelloError::Fragmented => "ClientHello split over several records",
            HelloError::Malformed => "malformed ClientHello",
        })
    }
}

impl std::error::Error for HelloError {}

/// The length of the record body announced by a 5-byte record header, checked to be a
/// handshake record of an allowed size.
pub fn record_len(header: &[u8]) -> Result<usize, HelloError> {
    let [kind, major, _minor, hi, lo] = *header.get(..RECORD_HEADER_LEN).ok_or(HelloError::BadRecord)? else {
        return Err(HelloError::BadRecord);
    };
    if kind != 0x16 {
        return Err(HelloError::NotHandshake);
    }
    if major != 3 {
        return Err(HelloError::BadRecord);
    }
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(HelloError::BadRecord);
    }
    Ok(len)
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if self.rest.len() < n {
            return Err(HelloError::Malformed);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<usize, HelloError> {
        Ok(usize::from(self.take(1)?[0]))
    }

    fn u16(&mut self) -> Result<usize, HelloError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// A sub-reader over a field prefixed by a length of `width` bytes (1 or 2).
    fn vec(&mut self, width: usize) -> Result<Reader<'a>, HelloError> {
        let n = if width == 1 { self.u8()? } else { self.u16()? };
        Ok(Reader { rest: self.take(n)? })
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Parse the first TLS record of a connection (`record`: header and body, as peeked).
pub fn parse(record: &[u8]) -> Result<ClientHello, HelloError> {
    let len = record_len(record)?;
    let body = record.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len).ok_or(HelloError::Malformed)?;
    let mut r = Reader { rest: body };
    if r.u8()? != 0x01 {
        return Err(HelloError::NotClientHello);
    }
    let b = r.take(3)?;
    let msg_len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
    if msg_len > r.rest.len() {
        return Err(HelloError::Fragmented);
    }
    let mut m = Reader { rest: r.take(msg_len)? };
    let _legacy_version = m.take(2)?;
    let _random = m.take(32)?;
    let session_id = m.vec(1)?;
    if session_id.rest.len() > 32 {
        return Err(HelloError::Malformed);
    }
    let suites = m.vec(2)?;
    if suites.rest.is_empty() || suites.rest.len() % 2 != 0 {
        return Err(HelloError::Malformed);
    }
    let compression = m.vec(1)?;
    if compression.rest.is_empty() {
        return Err(HelloError::Malformed);
    }
    let mut hello = ClientHello::default();
    if m.is_empty() {
        // No extensions at all (an old client): no SNI, no ALPN.
        return Ok(hello);
    }
    let mut exts = m.vec(2)?;
    if !m.is_empty() {
        return Err(HelloError::Malformed);
    }
    let mut seen_sni = false;
    let mut seen_alpn = false;
    while !exts.is_empty() {
        let kind = exts.u16()?;
        let mut data = exts.vec(2)?;
        match kind {
            0 => {
                if std::mem::replace(&mut seen_sni, true) {
                    return Err(HelloError::Malformed);
                }
                hello.server_name = server_name(&mut data)?;
            }
            16 => {
                if std::mem::replace(&mut seen_alpn, true) {
                    return Err(HelloError::Malformed);
                }
                let mut list = data.vec(2)?;
                if !data.is_empty() || list.is_empty() {
                    return Err(HelloError::Malformed);
                }
                while !list.is_empty() {
                    let proto = list.vec(1)?;
                    if proto.rest.is_empty() {
                        return Err(HelloError::Malformed);
                    }
                    hello.alpn.push(proto.rest.to_vec());
                }
            }
            _ => {}
        }
    }
    Ok(hello)
}

/// The host name of a `server_name` extension body (RFC 6066 §3).
fn server_name(data: &mut Reader<'_>) -> Result<Option<String>, HelloError> {
    let mut list = data.vec(2)?;
    if !data.is_empty() || list.is_empty() {
        return Err(HelloError::Malformed);
    }
    let mut name = None;
    while !list.is_empty() {
        let kind = list.u8()?;
        let value = list.vec(2)?;
        if kind == 0 && name.is_none() {
            let bytes = value.rest;
            let valid = !bytes.is_empty()
                && bytes.len() <= 253
                && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if !valid {
                return Err(HelloError::Malformed);
            }
            let text = String::from_utf8_lossy(bytes).to_ascii_lowercase();
            name = Some(text.trim_end_matches('.').to_string());
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn vec16(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// A ClientHello record built field by field.
    fn hello(sni: Option<&str>, alpn: &[&[u8]]) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut entry = vec![0u8];
            entry.extend(vec16(name.as_bytes()));
            exts.extend([0, 0]);
            exts.extend(vec16(&vec16(&entry)));
        }
        if !alpn.is_empty() {
            let mut list = Vec::new();
            for p in alpn {
                list.push(p.len() as u8);
                list.extend_from_slice(p);
            }
            exts.extend([0, 16]);
            exts.extend(vec16(&vec16(&list)));
        }
        // An extension we skip (supported_versions).
        exts.extend([0, 43, 0, 3, 2, 3, 4]);
        let mut msg = vec![3, 3];
        msg.extend([7u8; 32]);
        msg.push(0);
        msg.extend(vec16(&[0x13, 0x01]));
        msg.extend([1, 0]);
        msg.extend(vec16(&exts));
        let mut hs = vec![1, 0];
        hs.extend((msg.len() as u16).to_be_bytes());
        hs.extend(msg);
        let mut rec = vec![0x16, 3, 1];
        rec.extend(vec16(&hs));
        rec
    }

    #[test]
    fn reads_sni_and_alpn() {
        let h = parse(&hello(Some("App.Example.COM"), &[b"h2", b"http/1.1"])).unwrap();
        assert_eq!(h.server_name.as_deref(), Some("app.example.com"));
        assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(h.offers(b"h2") && !h.offers(b"acme-tls/1"));
        let h = parse(&hello(None, &[])).unwrap();
        assert_eq!(h, ClientHello::default());
    }

    #[test]
    fn a_real_client_hello_from_rustls() {
        let mut roots = rustls::RootCertStore::empty();
        let cert = rcgen::generate_simple_self_signed(vec!["x.test".into()]).unwrap();
        roots.add(cert.cert.der().clone()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("x.test").unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        let h = parse(&out).unwrap();
        assert_eq!(h.server_name.as_deref(), Some("x.test"));
        assert!(h.offers(b"h2"));
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Err(HelloError::NotHandshake));
        assert_eq!(parse(&[0x16, 3, 1, 0, 0]), Err(HelloError::BadRecord));
        assert_eq!(parse(&[0x16, 3, 1, 0xff, 0xff]), Err(HelloError::BadRecord));
        assert_eq!(record_len(&[0x16, 3]), Err(HelloError::BadRecord));
        let full = hello(Some("a.test"), &[b"h2"]);
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).is_err(), "cut at {cut}");
        }
        // A record announcing a longer handshake message than it holds.
        let mut frag = full.clone();
        frag[7] = 0x40;
        assert_eq!(parse(&frag), Err(HelloError::Fragmented));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(pos in 0usize..200, val in any::<u8>()) {
            let mut h = hello(Some("flip.test"), &[b"h2", b"acme-tls/1"]);
            let i = pos % h.len();
            h[i] = val;
            let _ = parse(&h);
        }

        #[test]
        fn names_round_trip(name in "[a-z0-9]{1,20}(\\.[a-z0-9]{1,20}){0,3}") {
            let h = parse(&hello(Some(&name), &[b"http/1.1"])).unwrap();
            prop_assert_eq!(h.server_name, Some(name));
        }
    }
}
