//! Glance v2: create an image record, stream the file into it (never held in
//! memory), check Glance's checksum against ours, wait for `active`.

use crate::digest::hex;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use md5::Md5;
use reqwest::Method;
use bytes::Bytes;
use reqwest::Body;
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
    /// Image name.
    #[serde(default)]
    pub name: Option<String>,
    /// queued, saving, active, killed, deleted, …
    pub status: String,
    /// When the image record was created (`2026-11-24T16:20:31Z`).
    #[serde(default)]
    pub created_at: Option<String>,
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

    /// Every image the user can see, page by page.
    pub fn list(&self) -> Result<Vec<Image>, CloudError> {
        const PAGE: usize = 100;
        let mut all: Vec<Image> = Vec::new();
        loop {
            let marker = all.last().map(|i| format!("&marker={}", encode(&i.id))).unwrap_or_default();
            let page: ImageList = self.svc.get(&format!("/images?limit={PAGE}{marker}"))?;
            let done = page.images.len() < PAGE;
            all.extend(page.images);
            if done {
                return Ok(all);
            }
        }
    }

    /// Renames an image (a JSON-patch `replace` of `/name`).
    pub fn rename(&self, id: &str, name: &str) -> Result<(), CloudError> {
        let patch = json!([{"op": "replace", "path": "/name", "value": name}]);
        self.svc.patch(&format!("/images/{id}"), "application/openstack-images-v2.1-json-patch", &patch)
    }

    /// Deletes an image; a missing one counts as deleted.
    pub fn delete(&self, id: &str) -> Result<(), CloudError> {
        self.svc.delete(&format!("/images/{id}"))
    }

    /// Streams `path` into the image with a progress bar, returning the
    /// digests of what was sent. A thread reads and hashes the file in 1 MiB
    /// chunks while the previous ones are on the wire; at most a few chunks
    /// are in memory. Ctrl-C/SIGTERM abort the transfer.
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
        let (chunks, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        let reader = {
            let bar = bar.clone();
            std::thread::spawn(move || read_chunks(file, len, &bar, &chunks))
        };
        // The receiver is shared so that it can be dropped when the request
        // ends: a server that answers before reading the whole body leaves
        // the body with the connection, which nothing polls or drops once
        // `send` returns, and the reader would wait on a full channel forever.
        let receiver = std::sync::Arc::new(std::sync::Mutex::new(Some(rx)));
        let polled = std::sync::Arc::clone(&receiver);
        let stream = futures_util::stream::poll_fn(move |cx| match polled.lock() {
            Ok(mut rx) => match rx.as_mut() {
                Some(rx) => rx.poll_recv(cx),
                None => std::task::Poll::Ready(None),
            },
            Err(_) => std::task::Poll::Ready(None),
        });
        let path_ = format!("/images/{id}/file");
        // An explicit Content-Length: Glance checks quotas against it (a
        // chunked upload would count as empty until it is too late).
        let req = self
            .svc
            .request(Method::PUT, &path_)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len)
            .body(Body::wrap_stream(stream));
        let started = Instant::now();
        let result = self.svc.send(&Method::PUT, &path_, req);
        if let Ok(mut rx) = receiver.lock() {
            rx.take();
        }
        bar.finish_and_clear();
        let digests = reader.join().map_err(|_| CloudError::Failed("the upload's reader thread panicked".into()))?;
        if crate::run::cancelled() {
            return Err(CloudError::Failed("upload interrupted by signal".into()));
        }
        result?;
        let digests = digests.map_err(|e| CloudError::Failed(format!("reading {}: {e}", path.display())))?;
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

/// Reads `file` in chunks into `out`, hashing as it goes; stops early when
/// the request is gone (the server answered already) or a signal arrives.
/// Returns the digests once all `len` bytes were handed over.
fn read_chunks(
    mut file: File,
    len: u64,
    bar: &ProgressBar,
    out: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<Digests> {
    const CHUNK: usize = 1 << 20;
    let (mut md5, mut sha512, mut size) = (Md5::new(), Sha512::new(), 0u64);
    while size < len {
        if crate::run::cancelled() {
            let _ = out.blocking_send(Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted by signal")));
            return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted by signal"));
        }
        let mut buf = vec![0u8; CHUNK.min((len - size) as usize)];
        let n = match file.read(&mut buf) {
            Ok(0) => {
                let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file shrank during the upload");
                let _ = out.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
                return Err(e);
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = out.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
                return Err(e);
            }
        };
        buf.truncate(n);
        md5.update(&buf);
        sha512.update(&buf);
        size += n as u64;
        bar.set_position(size);
        if out.blocking_send(Ok(Bytes::from(buf))).is_err() {
            return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the server stopped reading"));
        }
    }
    Ok(Digests { md5: hex(&md5.finalize()), sha512: hex(&sha512.finalize()), size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_hashes_what_it_passes_on() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let d = read_chunks(File::open(&p).unwrap(), 3, &ProgressBar::hidden(), &tx).unwrap();
        drop(tx);
        let mut out = Vec::new();
        while let Some(Ok(c)) = rx.blocking_recv() {
            out.extend_from_slice(&c);
        }
        assert_eq!(out, b"abc");
        assert_eq!(d.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert!(d.sha512.starts_with("ddaf35a193617aba"));
        assert_eq!(d.size, 3);
        // A file shorter than announced is an error, not a short upload.
        let (tx, _rx) = tokio::sync::mpsc::channel(4);
        assert!(read_chunks(File::open(&p).unwrap(), 5, &ProgressBar::hidden(), &tx).is_err());
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
