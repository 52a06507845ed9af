//! `dino download` against a local HTTP server on 127.0.0.1 that serves a small zip, honours
//! Range requests and cuts the first transfer halfway: the second run resumes, verifies, unpacks.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

fn small_zip() -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        z.add_directory("tiny-imagenet-200/train/n01443537/images/", opts).unwrap();
        z.start_file("tiny-imagenet-200/train/n01443537/images/n01443537_0.JPEG", opts).unwrap();
        z.write_all(&std::fs::read(image("astronaut.jpg")).unwrap()).unwrap();
        z.start_file("tiny-imagenet-200/wnids.txt", opts).unwrap();
        z.write_all(b"n01443537\n").unwrap();
        z.finish().unwrap();
    }
    buf.into_inner()
}

/// Serves `body`; request 0 is cut after half the bytes (a dropped connection).
fn serve(body: Vec<u8>) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let ranges = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, r) = (count.clone(), ranges.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut start = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    start = v.trim().trim_end_matches('-').parse().unwrap();
                    r.lock().unwrap().push(line.trim().to_string());
                }
            }
            let n = c.fetch_add(1, Ordering::SeqCst);
            let rest = &body[start..];
            let status = if start > 0 { "206 Partial Content" } else { "200 OK" };
            let header = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", rest.len());
            stream.write_all(header.as_bytes()).unwrap();
            let send = if n == 0 { &rest[..rest.len() / 2] } else { rest };
            let _ = stream.write_all(send);
            // Dropping the stream ends the connection (early on the first request).
        }
    });
    (format!("http://{addr}/tiny-imagenet-200.zip"), count, ranges)
}

#[test]
fn interrupted_download_resumes_verifies_and_unpacks() {
    let body = small_zip();
    let sha = Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (url, count, ranges) = serve(body.clone());
    let out = temp_dir("download");
    let args = ["download", "tiny-imagenet", "--output_dir", s(&out), "--url", &url, "--sha256", &sha];
    let first = dino(&args);
    assert_eq!(first.code, 2, "{}", first.stderr);
    assert!(first.error_line().contains("run again to resume"), "{}", first.stderr);
    let part = std::fs::metadata(out.join("tiny-imagenet-200.zip.part")).unwrap().len() as usize;
    assert!(part > 0 && part < body.len());

    let second = dino(&args);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(second.stderr.contains(&format!("resuming at {part} bytes")), "{}", second.stderr);
    assert_eq!(ranges.lock().unwrap().len(), 1);
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(out.join("tiny-imagenet-200/train/n01443537/images/n01443537_0.JPEG").exists());
    assert_eq!(std::fs::read(out.join("tiny-imagenet-200.zip")).unwrap(), body);
}

#[test]
fn a_wrong_checksum_is_refused_and_set_aside() {
    let (url, _, _) = serve(small_zip());
    let out = temp_dir("download-bad");
    // The server cuts request 0; the second attempt completes and must fail verification.
    let args = ["download", "tiny-imagenet", "--output_dir", s(&out), "--url", &url, "--sha256", &"0".repeat(64)];
    let _ = dino(&args);
    let r = dino(&args);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.error_line().contains("does not match"), "{}", r.stderr);
    assert!(out.join("tiny-imagenet-200.zip.bad").exists());
    assert!(!out.join("tiny-imagenet-200").exists());
}
