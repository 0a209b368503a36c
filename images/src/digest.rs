//! Hashing while streaming: a reader tap that computes SHA-256 and counts bytes (with a
//! ceiling) as data passes through, so nothing is read twice and nothing is buffered.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

use sha2::{Digest, Sha256};

/// `sha256:<hex>` of a byte slice.
pub fn sha256(bytes: &[u8]) -> String {
    hex_digest(Sha256::digest(bytes).as_slice())
}

fn hex_digest(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The hex part of `sha256:<hex>`.
pub fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Running hash and byte count of one stream.
#[derive(Default, Clone)]
pub struct Meter {
    hasher: Sha256,
    count: u64,
}

impl Meter {
    /// Bytes seen.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// `sha256:<hex>` of what was seen so far.
    pub fn digest(&self) -> String {
        hex_digest(self.hasher.clone().finalize().as_slice())
    }
}

/// A shared handle on a meter (the tap feeds it, the caller reads it).
pub type SharedMeter = Rc<RefCell<Meter>>;

/// Feeds every byte read through it into a [`Meter`]; fails past `limit` bytes.
pub struct Tap<R> {
    inner: R,
    meter: SharedMeter,
    limit: u64,
    what: &'static str,
    on_read: Option<Box<dyn FnMut(u64)>>,
}

impl<R: Read> Tap<R> {
    /// Wrap `inner`; returns the tap and a handle on its meter.
    pub fn new(inner: R, limit: u64, what: &'static str) -> (Self, SharedMeter) {
        let meter = SharedMeter::default();
        (
            Self {
                inner,
                meter: meter.clone(),
                limit,
                what,
                on_read: None,
            },
            meter,
        )
    }

    /// Call `f(n)` after every read of n bytes (progress bars).
    pub fn on_read(mut self, f: impl FnMut(u64) + 'static) -> Self {
        self.on_read = Some(Box::new(f));
        self
    }
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut m = self.meter.borrow_mut();
        m.hasher.update(&buf[..n]);
        m.count += n as u64;
        if m.count > self.limit {
            return Err(io::Error::other(format!(
                "{} exceeds the limit of {} bytes",
                self.what, self.limit
            )));
        }
        drop(m);
        if let Some(f) = &mut self.on_read {
            f(n as u64);
        }
        Ok(n)
    }
}

/// A reader several owners can pull from in turn (the decoder, then the drain).
pub struct Shared<R>(pub Rc<RefCell<R>>);

impl<R> Clone for Shared<R> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<R: Read> Read for Shared<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_counts_and_limits() {
        assert_eq!(
            sha256(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (mut t, m) = Tap::new(&b"abc"[..], 10, "x");
        io::copy(&mut t, &mut io::sink()).unwrap();
        assert_eq!(
            (m.borrow().digest(), m.borrow().count()),
            (sha256(b"abc"), 3)
        );
        let (mut t, _) = Tap::new(&b"abcdef"[..], 3, "layer");
        let err = io::copy(&mut t, &mut io::sink()).unwrap_err();
        assert!(
            err.to_string()
                .contains("layer exceeds the limit of 3 bytes")
        );
    }
}
