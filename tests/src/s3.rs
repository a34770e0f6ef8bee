//! A real S3-compatible server on 127.0.0.1 for the object-storage tests: `moto_server` from
//! PyPI (`moto[server]`, installed by `cargo xtask setup`), started on a free port and stopped
//! by pid when dropped. The binaries under test reach it through the usual AWS environment
//! variables ([`S3Server::env`]); the tests inspect and prepare buckets with boto3, which moto
//! brings along.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Credentials moto accepts (it does not check them).
const KEY: &str = "simuboost-test";

/// A running moto_server.
pub struct S3Server {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

/// A TCP port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn moto_server() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("moto_server"))
        .find(|p| p.is_file())
}

impl S3Server {
    /// Starts moto_server on a free port of 127.0.0.1, or `None` (a visible skip, or a failure
    /// under `SIMUBOOST_REQUIRE_KVM`) when it is not installed.
    pub fn start() -> Option<S3Server> {
        let Some(program) = moto_server() else {
            crate::skip(
                "moto_server is not installed (`cargo xtask setup` pip-installs moto[server])",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).expect("moto log");
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("moto_server starts");
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let began = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "moto_server did not listen on port {port} within a minute: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("moto.log")).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Points `cmd` at this server through the AWS environment variables.
    pub fn env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", KEY)
            .env("AWS_SECRET_ACCESS_KEY", KEY)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true")
            .env_remove("AWS_ENDPOINT")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
    }

    /// Runs a boto3 snippet with `s3` bound to a client of this server; returns its stdout.
    pub fn boto3(&self, code: &str) -> String {
        let script = format!(
            "import boto3, os, sys, json\n\
             s3 = boto3.client('s3', endpoint_url={endpoint:?}, aws_access_key_id={KEY:?}, \
             aws_secret_access_key={KEY:?}, region_name='us-east-1')\n{code}\n",
            endpoint = self.endpoint
        );
        crate::python3(&format!("boto3 failed running\n{code}"), &script, &[], None)
    }

    /// Creates `bucket` (at least 3 characters).
    pub fn create_bucket(&self, bucket: &str) {
        self.boto3(&format!("s3.create_bucket(Bucket={bucket:?})"));
    }

    /// Keys and sizes of the objects under `prefix` in `bucket`, sorted.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let out = self.boto3(&format!(
            "p = s3.get_paginator('list_objects_v2')\n\
             for page in p.paginate(Bucket={bucket:?}, Prefix={prefix:?}):\n    \
             for o in page.get('Contents', []):\n        print(o['Key'], o['Size'])"
        ));
        let mut objects: Vec<(String, u64)> = out
            .lines()
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, s)| (k.to_string(), s.parse().unwrap_or(0)))
            .collect();
        objects.sort();
        objects
    }

    /// Uploads every file under `dir` to `bucket/prefix/`: a plain copy of a directory, as
    /// `aws s3 cp --recursive` makes it.
    pub fn upload_dir(&self, dir: &Path, bucket: &str, prefix: &str) {
        self.boto3(&format!(
            "root = {root:?}\n\
             for d, _, files in os.walk(root):\n    \
             for f in files:\n        \
             p = os.path.join(d, f)\n        \
             s3.upload_file(p, {bucket:?}, {prefix:?} + '/' + os.path.relpath(p, root))",
            root = dir.display().to_string()
        ));
    }

    /// Replaces the object `key` with `bytes`.
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let tmp = self._dir.path().join("put.bin");
        std::fs::write(&tmp, bytes).expect("write");
        self.boto3(&format!(
            "s3.upload_file({path:?}, {bucket:?}, {key:?})",
            path = tmp.display().to_string()
        ));
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
