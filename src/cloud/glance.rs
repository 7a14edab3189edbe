//! Glance v2: create an image record, stream the file into it (never held in
//! memory), check Glance's checksum against ours, wait for `active`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use md5::Md5;
use reqwest::Method;
use reqwest::blocking::Body;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

use super::http::Service;
use super::{CloudError, Session};

/// What dbimage asks Glance to create.
#[derive(Debug, Clone)]
pub struct NewImage {
    /// Image name.
    pub name: String,
    /// private, shared, community or public.
    pub visibility: String,
    /// Tags (`trove` and the datastore).
    pub tags: Vec<String>,
    /// Extra properties (string values, as Glance stores them).
    pub properties: BTreeMap<String, String>,
    /// Smallest root disk, in GB, that holds the image's virtual disk.
    pub min_disk_gb: u64,
}

/// An image as Glance reports it (the fields dbimage reads).
#[derive(Debug, Clone, Deserialize)]
pub struct Image {
    /// Image id.
    pub id: String,
    /// queued, saving, active, killed, deleted, …
    pub status: String,
    /// Size of the stored data.
    #[serde(default)]
    pub size: Option<u64>,
    /// MD5 of the data (legacy checksum).
    #[serde(default)]
    pub checksum: Option<String>,
    /// The multihash algorithm (sha512 by default).
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    /// The multihash value.
    #[serde(default)]
    pub os_hash_value: Option<String>,
    /// Everything else, including custom properties.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Image {
    /// A custom property's value.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(Value::as_str)
    }
}

#[derive(Debug, Deserialize)]
struct ImageList {
    images: Vec<Image>,
}

/// Digests of the bytes sent, computed while they stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// MD5, hex.
    pub md5: String,
    /// SHA-512, hex.
    pub sha512: String,
    /// Bytes sent.
    pub size: u64,
}

/// The Glance API of a session.
pub struct Glance<'a> {
    svc: Service<'a>,
}

impl<'a> Glance<'a> {
    /// Glance from the session's catalog (`image` service, `/v2`).
    pub fn new(session: &'a Session) -> Result<Glance<'a>, CloudError> {
        Ok(Glance { svc: session.service("Glance", "image", "/v2")? })
    }

    /// Creates the image record (status `queued`).
    pub fn create(&self, new: &NewImage) -> Result<Image, CloudError> {
        let mut body = json!({
            "name": new.name,
            "disk_format": "qcow2",
            "container_format": "bare",
            "visibility": new.visibility,
            "tags": new.tags,
            "min_disk": new.min_disk_gb,
        });
        for (k, v) in &new.properties {
            body[k] = json!(v);
        }
        self.svc.post("/images", &body)
    }

    /// One image.
    pub fn get(&self, id: &str) -> Result<Image, CloudError> {
        self.svc.get(&format!("/images/{id}"))
    }

    /// Images with this exact name (any status but deleted).
    pub fn find_by_name(&self, name: &str) -> Result<Vec<Image>, CloudError> {
        let list: ImageList = self.svc.get(&format!("/images?name={}&limit=100", encode(name)))?;
        Ok(list.images)
    }

    /// Deletes an image; a missing one counts as deleted.
    pub fn delete(&self, id: &str) -> Result<(), CloudError> {
        self.svc.delete(&format!("/images/{id}"))
    }

    /// Streams `path` into the image with a progress bar, returning the
    /// digests of what was sent. Ctrl-C/SIGTERM abort the transfer.
    pub fn upload(&self, id: &str, path: &Path) -> Result<Digests, CloudError> {
        let file = File::open(path)
            .map_err(|e| CloudError::Failed(format!("cannot open {}: {e}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| CloudError::Failed(format!("cannot stat {}: {e}", path.display())))?
            .len();
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("  upload {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = HashingReader::new(BufReader::with_capacity(1 << 20, file), len, bar.clone(), tx);
        let path_ = format!("/images/{id}/file");
        let req = self
            .svc
            .request(Method::PUT, &path_)
            .header("Content-Type", "application/octet-stream")
            .body(Body::sized(reader, len));
        let started = Instant::now();
        let result = self.svc.send(&Method::PUT, &path_, req);
        bar.finish_and_clear();
        if crate::run::cancelled() {
            return Err(CloudError::Failed("upload interrupted by signal".into()));
        }
        result?;
        let digests = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| CloudError::Failed("upload finished but the file was not read to its end".into()))?;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            "uploaded {} in {secs:.1} s ({}/s)",
            HumanBytes(digests.size),
            HumanBytes((digests.size as f64 / secs) as u64)
        );
        Ok(digests)
    }

    /// Polls until the image is `active`; `killed` or a timeout is an error.
    pub fn wait_active(&self, id: &str, timeout: Duration) -> Result<Image, CloudError> {
        let deadline = Instant::now() + timeout;
        loop {
            let img = self.get(id)?;
            match img.status.as_str() {
                "active" => return Ok(img),
                "killed" | "deleted" | "pending_delete" => {
                    return Err(CloudError::Failed(format!("Glance marked image {id} {}", img.status)));
                }
                _ if Instant::now() >= deadline => {
                    return Err(CloudError::Failed(format!(
                        "image {id} still {} after {} s; Glance may be stuck",
                        img.status,
                        timeout.as_secs()
                    )));
                }
                _ => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
}

/// Checks Glance's record of the data against what was sent.
pub fn verify(img: &Image, sent: &Digests) -> Result<(), CloudError> {
    let mismatch = |what: &str, theirs: &str, ours: &str| {
        CloudError::Failed(format!(
            "Glance stored different bytes than dbimage sent for image {} ({what}: Glance {theirs}, sent {ours})",
            img.id
        ))
    };
    if let Some(size) = img.size
        && size != sent.size
    {
        return Err(mismatch("size", &size.to_string(), &sent.size.to_string()));
    }
    let mut checked = false;
    if img.os_hash_algo.as_deref() == Some("sha512")
        && let Some(v) = &img.os_hash_value
    {
        if !v.eq_ignore_ascii_case(&sent.sha512) {
            return Err(mismatch("sha512", v, &sent.sha512));
        }
        checked = true;
    }
    if let Some(c) = &img.checksum {
        if !c.eq_ignore_ascii_case(&sent.md5) {
            return Err(mismatch("md5", c, &sent.md5));
        }
        checked = true;
    }
    if !checked {
        return Err(CloudError::Failed(format!(
            "Glance reports no checksum for image {}; cannot verify the upload",
            img.id
        )));
    }
    Ok(())
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Hashes and counts bytes as the HTTP client reads them, and stops the
/// transfer when a signal asks to. The digests are sent once `len` bytes
/// have passed: the client stops reading at Content-Length, before EOF.
struct HashingReader<R> {
    inner: R,
    len: u64,
    md5: Md5,
    sha512: Sha512,
    size: u64,
    bar: ProgressBar,
    done: Option<std::sync::mpsc::Sender<Digests>>,
}

impl<R> HashingReader<R> {
    fn new(inner: R, len: u64, bar: ProgressBar, done: std::sync::mpsc::Sender<Digests>) -> Self {
        HashingReader { inner, len, md5: Md5::new(), sha512: Sha512::new(), size: 0, bar, done: Some(done) }
    }

    fn finish(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(Digests {
                md5: hex(&self.md5.clone().finalize()),
                sha512: hex(&self.sha512.clone().finalize()),
                size: self.size,
            });
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if crate::run::cancelled() {
            return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted by signal"));
        }
        let n = self.inner.read(buf)?;
        self.md5.update(&buf[..n]);
        self.sha512.update(&buf[..n]);
        self.size += n as u64;
        self.bar.set_position(self.size);
        if n == 0 || self.size >= self.len {
            self.finish();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_hashes_what_it_passes_on() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut r = HashingReader::new(&b"abc"[..], 3, ProgressBar::hidden(), tx);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
        let d = rx.recv().unwrap();
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert!(d.sha512.starts_with("ddaf35a193617aba"));
        assert_eq!(d.size, 3);
    }

    fn image(size: u64, md5: &str) -> Image {
        serde_json::from_value(json!({"id": "i", "status": "active", "size": size, "checksum": md5,
            "os_hash_algo": "sha512", "os_hash_value": "AA", "dbimage_sha256": "x"}))
        .unwrap()
    }

    #[test]
    fn verify_compares_size_and_hashes() {
        let sent = Digests { md5: "m".into(), sha512: "aa".into(), size: 3 };
        assert!(verify(&image(3, "m"), &sent).is_ok());
        assert!(verify(&image(4, "m"), &sent).unwrap_err().to_string().contains("size"));
        assert!(verify(&image(3, "x"), &sent).unwrap_err().to_string().contains("md5"));
        assert_eq!(image(3, "m").property("dbimage_sha256"), Some("x"));
    }

    #[test]
    fn query_encoding() {
        assert_eq!(encode("pg 15/a"), "pg%2015%2Fa");
    }
}
