//! simuboost's functional simulator: replays one interval of a recorded run in unicorn-engine
//! (QEMU's TCG as a library), driven by `simuboost-replay` as a child process, and reports what
//! only a simulator can: the exact instruction count and the exact set of frames accessed.
//!
//! # Licence
//! This crate is **GPL-2.0-only** because it links unicorn-engine (GPL-2.0). It links only
//! GPLv2-compatible crates (MIT, BSD, ISC, Zlib, or dual MIT/Apache-2.0 crates taken under MIT)
//! and never an Apache-2.0-only one (arrow, parquet) nor `simuboost-vmm`/`simuboost-format`.
//! The replayer (MIT OR Apache-2.0, links Apache-2.0-only crates) runs it as a separate process
//! through `simuboost-sim-proto`. `tests/licences.rs` checks the dependency graph.
//!
//! # Usage
//! `simuboost-sim --memfd N --socket M`: guest RAM is the memfd (its size is the RAM size), the
//! protocol runs over the Unix stream socket (see `simuboost-sim-proto`). Exit status 0 after a
//! `Final`, 1 on any error (also reported as `Exit::Error` while the parent listens).
//!
//! Modules: `cpu` (state in and out), `exits` (running to the next exit and the hooks),
//! `analysis` (the [`analysis::Analysis`] trait, instruction count, working set), `builtin`
//! (the `blocks`, `pages`, `trace` and `cache` analyses), `cache` (the cache model), `paging`
//! (RAM and the page walk).

mod analysis;
mod builtin;
mod cache;
mod cpu;
mod exits;
mod paging;
mod watchdog;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use simuboost_sim_proto::{
    read_frame, send_fd, write_frame, Exit, FrameError, FromSim, ToSim, PROTOCOL_VERSION,
};
use userfaultfd::UffdBuilder;

use crate::exits::Sim;
use crate::paging::Ram;

/// Errors of the simulator process.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Bad command line.
    #[error("usage: simuboost-sim --memfd FD --socket FD ({0})")]
    Usage(String),
    /// An OS call failed.
    #[error("{what} failed: {source}")]
    Os {
        /// The call.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// userfaultfd could not be set up.
    #[error("cannot set up userfaultfd on guest RAM: {0}")]
    Userfaultfd(String),
    /// The parent went away or sent garbage.
    #[error("talking to the replayer failed: {0}")]
    Frame(#[from] FrameError),
    /// The parent sent a message out of turn or with bad contents.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// unicorn refused something.
    #[error("unicorn: {what} failed: {detail}")]
    Unicorn {
        /// The operation.
        what: &'static str,
        /// unicorn's error.
        detail: String,
    },
    /// The CPU state could not be entered, or the simulation went somewhere it cannot follow.
    #[error("{0}")]
    Entry(String),
    /// An analysis could not be set up or failed (a bad cache geometry, the trace's socket).
    #[error("analysis: {0}")]
    Analysis(String),
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> SimError {
    move |source| SimError::Os { what, source }
}

/// Parses `--memfd N --socket M`.
fn parse_args() -> Result<(RawFd, RawFd), SimError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut memfd, mut socket) = (None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| SimError::Usage(format!("{flag} needs a value")))?;
        let fd: RawFd = value
            .parse()
            .ok()
            .filter(|&fd: &RawFd| fd >= 0)
            .ok_or_else(|| SimError::Usage(format!("{flag}: {value:?} is not a descriptor")))?;
        match flag.as_str() {
            "--memfd" => memfd = Some(fd),
            "--socket" => socket = Some(fd),
            other => return Err(SimError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    match (memfd, socket) {
        (Some(m), Some(s)) if m != s => Ok((m, s)),
        _ => Err(SimError::Usage("both descriptors are required".into())),
    }
}

/// Takes ownership of an inherited descriptor after checking it is open.
fn inherited(fd: RawFd, what: &'static str) -> Result<OwnedFd, SimError> {
    // SAFETY: F_GETFD only queries the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(os(what)(std::io::Error::last_os_error()));
    }
    // SAFETY: the parent passed this descriptor for us to own; nothing else in this process
    // refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Maps the memfd shared (never unmapped: unicorn uses it until exit).
fn map_ram(memfd: &OwnedFd) -> Result<Ram, SimError> {
    // SAFETY: fstat writes into the zeroed stat buffer only.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; memfd is open.
    if unsafe { libc::fstat(memfd.as_raw_fd(), &mut st) } < 0 {
        return Err(os("fstat on the guest RAM memfd")(
            std::io::Error::last_os_error(),
        ));
    }
    let bytes = st.st_size as u64;
    if bytes == 0
        || !bytes.is_multiple_of(simuboost_abi::PAGE_SIZE)
        || bytes > simuboost_abi::layout::MAX_MEM_BYTES
    {
        return Err(SimError::Protocol(format!(
            "guest RAM memfd has {bytes} bytes: not a whole number of pages up to 16 GiB"
        )));
    }
    // SAFETY: a fresh shared mapping of the whole memfd; the kernel chooses the address.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            memfd.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(os("mmap of guest RAM")(std::io::Error::last_os_error()));
    }
    // SAFETY: the mapping has `bytes` bytes and is never unmapped.
    Ok(unsafe { Ram::new(base.cast(), bytes) })
}

/// Registers RAM with a new userfaultfd and hands it to the parent: from now on the parent
/// serves every page not yet in the memfd's page cache.
fn hand_over_uffd(ram: &Ram, socket: &UnixStream) -> Result<(), SimError> {
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(true)
        .create()
        .map_err(|e| SimError::Userfaultfd(e.to_string()))?;
    uffd.register(ram.base().cast(), ram.bytes() as usize)
        .map_err(|e| SimError::Userfaultfd(e.to_string()))?;
    // SAFETY: the Uffd owns this descriptor and outlives the borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(uffd.as_raw_fd()) };
    send_fd(socket.as_fd(), fd).map_err(os("sending the userfaultfd"))?;
    // Our copy closes here: if the parent dies, the registration goes with its copy.
    drop(uffd);
    Ok(())
}

fn send(socket: &mut UnixStream, message: &FromSim) -> Result<(), SimError> {
    Ok(write_frame(socket, message)?)
}

fn serve(socket: &mut UnixStream, ram: Ram) -> Result<(), SimError> {
    let start = match read_frame::<ToSim>(socket)? {
        ToSim::Start(s) => s,
        other => return Err(SimError::Protocol(format!("expected Start, got {other:?}"))),
    };
    if start.version != PROTOCOL_VERSION {
        return Err(SimError::Protocol(format!(
            "the replayer speaks protocol version {}, this simulator {PROTOCOL_VERSION}",
            start.version
        )));
    }
    if start.mem_bytes != ram.bytes() {
        return Err(SimError::Protocol(format!(
            "Start says {} bytes of RAM, the memfd has {}",
            start.mem_bytes,
            ram.bytes()
        )));
    }
    let extra = builtin::from_request(&start.analyses, || socket.try_clone())
        .map_err(SimError::Analysis)?;
    let mut sim = Sim::new(ram, &start, extra)?;
    loop {
        let exit = sim.run()?;
        sim.flush_analyses()?;
        let resumable = matches!(exit, Exit::Doorbell { .. });
        send(socket, &FromSim::Exit(exit))?;
        match read_frame::<ToSim>(socket)? {
            ToSim::Resume { written } if resumable => sim.device_wrote(&written)?,
            ToSim::Finish => {
                let out = sim.finish()?;
                return send(socket, &FromSim::Final(Box::new(out)));
            }
            other => {
                return Err(SimError::Protocol(format!(
                    "unexpected {other:?} after {}",
                    if resumable {
                        "a doorbell exit"
                    } else {
                        "a crash"
                    }
                )))
            }
        }
    }
}

fn run() -> Result<(), SimError> {
    let (memfd, socket) = parse_args()?;
    let memfd = inherited(memfd, "the guest RAM descriptor")?;
    let socket = inherited(socket, "the socket descriptor")?;
    let mut socket = UnixStream::from(socket);
    let ram = map_ram(&memfd)?;
    drop(memfd);
    hand_over_uffd(&ram, &socket)?;
    send(
        &mut socket,
        &FromSim::Ready {
            version: PROTOCOL_VERSION,
            build: format!("simuboost-sim {}", env!("CARGO_PKG_VERSION")),
            ram_base: ram.base() as u64,
        },
    )?;
    match serve(&mut socket, ram) {
        Ok(()) => Ok(()),
        Err(e) => {
            // Tell the parent while it may still listen; it may also be gone.
            let _ = send(
                &mut socket,
                &FromSim::Exit(Exit::Error {
                    message: e.to_string(),
                }),
            );
            Err(e)
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simuboost-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
