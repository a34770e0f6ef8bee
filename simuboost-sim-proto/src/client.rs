//! The replayer's side: spawn `simuboost-sim`, hand it guest RAM, and drive it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use crate::frame::{write_frame, FrameError};
use crate::trace_frame::read_from_sim;
use crate::{recv_fd, Exit, Final, FrameRun, FromSim, Start, ToSim, TraceBatch, PROTOCOL_VERSION};

/// File name of the simulator binary.
pub const SIM_BINARY: &str = "simuboost-sim";
/// Environment variable that overrides where the simulator binary is.
pub const SIM_ENV: &str = "SIMUBOOST_SIM";

/// Errors driving the simulator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The binary is not where it was looked for.
    #[error("the simulator binary {path} does not exist (build it with `cargo build -p simuboost-sim`, or set {SIM_ENV})")]
    NotFound {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The process could not be started.
    #[error("cannot start the simulator {path}: {source}")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The simulator speaks another protocol version.
    #[error("the simulator ({build}) speaks protocol version {theirs}, this replayer speaks {ours}: rebuild simuboost-sim")]
    VersionMismatch {
        /// Ours.
        ours: u32,
        /// The simulator's.
        theirs: u32,
        /// The simulator's build string.
        build: String,
    },
    /// The simulator process exited or was killed while it should have been talking.
    #[error("the simulator process died ({status})")]
    Died {
        /// How it ended, in words.
        status: String,
    },
    /// No message within the read timeout.
    #[error("the simulator did not answer within {0:?}")]
    Timeout(Duration),
    /// The simulator sent something out of turn.
    #[error("unexpected message from the simulator: {0}")]
    Unexpected(String),
    /// The socket failed, or a message was malformed.
    #[error("talking to the simulator failed: {0}")]
    Frame(#[from] FrameError),
    /// The caller's trace sink refused a batch (e.g. writing the trace file failed).
    #[error("handling the simulator's trace failed: {0}")]
    TraceSink(String),
    /// Some other OS call failed.
    #[error("{what} failed: {source}")]
    Os {
        /// The call.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// Where the simulator binary is: `$SIMUBOOST_SIM` if set, else `simuboost-sim` in the directory
/// of the running executable (cargo puts all of a workspace's binaries there). Test binaries
/// live one level down (`target/<profile>/deps`), so the parent directory is tried too.
pub fn locate_binary() -> Result<PathBuf, ClientError> {
    if let Some(path) = std::env::var_os(SIM_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ClientError::NotFound { path })
        };
    }
    let exe = std::env::current_exe().map_err(|source| ClientError::Os {
        what: "finding the running executable",
        source,
    })?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let beside = dir.join(SIM_BINARY);
    if beside.is_file() {
        return Ok(beside);
    }
    if dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(up) = dir.parent().map(|d| d.join(SIM_BINARY)) {
            if up.is_file() {
                return Ok(up);
            }
        }
    }
    Err(ClientError::NotFound { path: beside })
}

/// A running simulator process. Dropping it kills and reaps the process.
pub struct SimProcess {
    child: Child,
    stream: UnixStream,
    build: String,
    ram_base: u64,
    timeout: Option<Duration>,
}

fn clear_cloexec(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number has no memory effects; F_SETFD only changes flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl SimProcess {
    /// Starts `binary` on guest RAM `memfd` (its size is the guest's RAM size). Returns the
    /// process once it is ready, and the simulator's userfaultfd: every page of `memfd` that is
    /// not in its page cache yet blocks the simulator until the caller installs it through this
    /// fd (`UFFDIO_COPY`/`UFFDIO_ZEROPAGE` at the simulator's addresses, reported in the fault
    /// events). Serve it from a thread before [`SimProcess::start`].
    pub fn spawn(
        binary: &Path,
        memfd: BorrowedFd<'_>,
    ) -> Result<(SimProcess, OwnedFd), ClientError> {
        if !binary.is_file() {
            return Err(ClientError::NotFound {
                path: binary.to_path_buf(),
            });
        }
        let (ours, theirs) = UnixStream::pair().map_err(|source| ClientError::Os {
            what: "socketpair",
            source,
        })?;
        let memfd_raw = memfd.as_raw_fd();
        let sock_raw = theirs.as_raw_fd();
        let mut command = Command::new(binary);
        command
            .arg("--memfd")
            .arg(memfd_raw.to_string())
            .arg("--socket")
            .arg(sock_raw.to_string());
        // SAFETY: the closure runs in the child between fork and exec and only calls fcntl,
        // which is async-signal-safe; it keeps the two descriptors open across exec.
        unsafe {
            command.pre_exec(move || {
                clear_cloexec(memfd_raw)?;
                clear_cloexec(sock_raw)
            });
        }
        let child = command.spawn().map_err(|source| ClientError::Spawn {
            path: binary.to_path_buf(),
            source,
        })?;
        drop(theirs);
        let mut sim = SimProcess {
            child,
            stream: ours,
            build: String::new(),
            ram_base: 0,
            timeout: None,
        };
        let uffd = match recv_fd(sim.stream.as_fd()) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(sim.died()),
            Err(source) => {
                return Err(ClientError::Os {
                    what: "receiving the simulator's userfaultfd",
                    source,
                })
            }
        };
        match sim.receive()? {
            FromSim::Ready {
                version,
                build,
                ram_base,
            } if version == PROTOCOL_VERSION => {
                sim.build = build;
                sim.ram_base = ram_base;
            }
            FromSim::Ready { version, build, .. } => {
                return Err(ClientError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: version,
                    build,
                })
            }
            other => return Err(ClientError::Unexpected(format!("{other:?} before Ready"))),
        }
        Ok((sim, uffd))
    }

    /// The simulator's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The simulator's build string (crate version).
    pub fn build(&self) -> &str {
        &self.build
    }

    /// Where guest RAM is mapped in the simulator (the addresses its userfaultfd reports).
    pub fn ram_base(&self) -> u64 {
        self.ram_base
    }

    /// Bounds every wait for a message (`None`: wait for ever). The simulator bounds its own
    /// runs with [`Start::timeout_ms`]; this is the parent's watchdog on top.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(|source| ClientError::Os {
                what: "setting the socket timeout",
                source,
            })?;
        self.timeout = timeout;
        Ok(())
    }

    /// Sends the interval's start state; the simulator runs to its first exit
    /// ([`SimProcess::next_exit`]).
    pub fn start(&mut self, start: &Start) -> Result<(), ClientError> {
        self.send(&ToSim::Start(Box::new(start.clone())))
    }

    /// Waits for the simulator's next exit. Without the trace analysis: a trace batch is a
    /// protocol error here (use [`SimProcess::next_exit_with`]).
    pub fn next_exit(&mut self) -> Result<Exit, ClientError> {
        self.next_exit_with(&mut |batch: TraceBatch| {
            Err(format!(
                "{} trace rows arrived but no trace was asked for",
                batch.len()
            ))
        })
    }

    /// Waits for the simulator's next exit, handing every trace batch that arrives before it
    /// to `sink` (in order; the batch is the caller's to keep). An error from `sink` ends the
    /// wait with [`ClientError::TraceSink`] (the simulator is left to be killed on drop).
    pub fn next_exit_with(
        &mut self,
        sink: &mut dyn FnMut(TraceBatch) -> Result<(), String>,
    ) -> Result<Exit, ClientError> {
        loop {
            match self.receive()? {
                FromSim::Exit(exit) => return Ok(exit),
                FromSim::Trace(batch) if batch.is_consistent() => {
                    sink(batch).map_err(ClientError::TraceSink)?
                }
                FromSim::Trace(_) => {
                    return Err(ClientError::Unexpected(
                        "a trace batch whose columns differ in length".into(),
                    ))
                }
                other => {
                    return Err(ClientError::Unexpected(format!(
                        "{other:?} instead of an exit"
                    )))
                }
            }
        }
    }

    /// Lets the simulator continue after a doorbell exit; `written` are the frames the device
    /// wrote while handling it.
    pub fn resume(&mut self, written: Vec<FrameRun>) -> Result<(), ClientError> {
        self.send(&ToSim::Resume { written })
    }

    /// Ends the interval (after its last exit) and returns the final state. The simulator exits.
    pub fn finish(&mut self) -> Result<Final, ClientError> {
        self.send(&ToSim::Finish)?;
        match self.receive()? {
            FromSim::Final(f) => {
                // The simulator exits after Final; reap it so no zombie is left.
                let _ = self.child.wait();
                Ok(*f)
            }
            FromSim::Exit(Exit::Error { message }) => Err(ClientError::Unexpected(message)),
            other => Err(ClientError::Unexpected(format!(
                "{other:?} instead of Final"
            ))),
        }
    }

    /// Kills the simulator and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus, ClientError> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(status);
        }
        // kill(2) on our own child's pid: it is not reaped yet, so the pid is still ours.
        let _ = self.child.kill();
        self.child.wait().map_err(|source| ClientError::Os {
            what: "waiting for the simulator",
            source,
        })
    }

    fn send(&mut self, message: &ToSim) -> Result<(), ClientError> {
        match write_frame(&mut self.stream, message) {
            Ok(()) => Ok(()),
            Err(FrameError::Closed) => Err(self.died()),
            Err(e) => Err(e.into()),
        }
    }

    fn receive(&mut self) -> Result<FromSim, ClientError> {
        match read_from_sim(&mut self.stream) {
            Ok(m) => Ok(m),
            Err(FrameError::Closed) => Err(self.died()),
            Err(FrameError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ClientError::Timeout(self.timeout.unwrap_or_default()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The connection closed: the process has ended (or is ending); reap it and say how.
    fn died(&mut self) -> ClientError {
        let status = match self.child.wait() {
            Ok(s) => describe(s),
            Err(e) => format!("cannot wait for it: {e}"),
        };
        ClientError::Died { status }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
