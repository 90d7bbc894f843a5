//! The S3 side of the harness: a moto server per test, started by `scripts/s3_server.py` on a
//! port the kernel picks, with its own bucket and a client to look inside it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::unique;

/// A moto S3 server owned by one test (so a test may stop it without disturbing others).
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

fn python() -> PathBuf {
    match std::env::var_os("PGMEDIC_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
            assert!(
                venv.exists(),
                "no S3 test server: run the suite with scripts/test (it installs moto into .venv)"
            );
            venv
        }
    }
}

impl S3Server {
    pub fn start() -> S3Server {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3_server.py");
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the S3 test server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("the S3 server prints its port");
        let port = line
            .trim()
            .strip_prefix("port=")
            .unwrap_or_else(|| panic!("unexpected S3 server output: {line:?}"));
        let endpoint = format!("http://127.0.0.1:{port}");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = rt.block_on(s3_client(&endpoint));
        let bucket = unique("bucket").replace('_', "-");
        rt.block_on(client.create_bucket().bucket(&bucket).send()).expect("create bucket");
        S3Server { child, endpoint, bucket, rt, client }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Multipart uploads in progress in the bucket.
    pub fn uploads(&self) -> usize {
        let out = self
            .rt
            .block_on(self.client.list_multipart_uploads().bucket(&self.bucket).send())
            .expect("list uploads");
        out.uploads().len()
    }

    /// Parts uploaded so far to the open multipart uploads. (moto answers ListParts with a root
    /// element the SDK rejects, so this asks over plain HTTP; moto does not check signatures.)
    pub fn parts(&self) -> usize {
        let out = self
            .rt
            .block_on(self.client.list_multipart_uploads().bucket(&self.bucket).send())
            .expect("list uploads");
        let mut n = 0;
        for u in out.uploads() {
            let path = format!("/{}/{}?uploadId={}", self.bucket, u.key().unwrap(), u.upload_id().unwrap());
            n += http_get(&self.endpoint, &path).matches("<PartNumber>").count();
        }
        n
    }

    pub fn keys(&self) -> Vec<String> {
        let out = self
            .rt
            .block_on(self.client.list_objects_v2().bucket(&self.bucket).send())
            .expect("list objects");
        out.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect()
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        let out =
            self.rt.block_on(self.client.get_object().bucket(&self.bucket).key(key).send()).expect("get");
        self.rt.block_on(out.body.collect()).unwrap().into_bytes().to_vec()
    }

    /// The object's server-side encryption as the server reports it: (algorithm, KMS key id).
    pub fn encryption(&self, key: &str) -> (Option<String>, Option<String>) {
        let out =
            self.rt.block_on(self.client.head_object().bucket(&self.bucket).key(key).send()).expect("head");
        (
            out.server_side_encryption().map(|s| s.as_str().to_string()),
            out.ssekms_key_id().map(str::to_string),
        )
    }

    /// The object's CRC32 checksum as the server keeps it (a multipart upload's composite, whose
    /// `-<parts>` suffix moto leaves out of HEAD); None when it keeps none.
    pub fn crc32(&self, key: &str) -> Option<String> {
        let req = self.client.head_object().bucket(&self.bucket).key(key);
        let out = self
            .rt
            .block_on(req.checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled).send())
            .expect("head");
        out.checksum_crc32().map(|c| c.split('-').next().unwrap_or_default().to_string())
    }

    pub fn put(&self, key: &str, data: Vec<u8>) {
        let req = self.client.put_object().bucket(&self.bucket).key(key).body(data.into());
        self.rt.block_on(req.send()).expect("put");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// S3's composite CRC32 of `data` uploaded in parts of `part` bytes: the CRC32 of the parts'
/// big-endian CRC32s, in base64.
pub fn composite_crc32(data: &[u8], part: usize) -> String {
    let crcs: Vec<u8> = data.chunks(part).flat_map(|c| crc32fast::hash(c).to_be_bytes()).collect();
    base64(&crc32fast::hash(&crcs).to_be_bytes())
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = c.iter().enumerate().fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= c.len() { A[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

fn http_get(endpoint: &str, path: &str) -> String {
    use std::io::Read;
    let addr = endpoint.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to the S3 server");
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    body
}

async fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new("test", "test", None, None, "tests");
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}
