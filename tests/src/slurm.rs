//! A real one-node Slurm cluster on 127.0.0.1 for the executor tests, started from Debian's
//! packages (`slurmctld slurmd slurm-client munge`, installed by `cargo xtask setup`) without
//! systemd, following the recipe verified in shared/MACHINE.md: a private munge key and socket,
//! `SlurmUser=root`, `proctrack/linuxproc`, `task/none`, `MailProg=/bin/true`, `MinJobAge=4`,
//! free non-default ports, `NodeName=localhost NodeAddr=127.0.0.1` with the CPU layout of
//! `slurmd -C`, the spool directory created first; all three daemons in the foreground, stopped
//! by pid when the cluster is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The programs the cluster needs.
const PROGRAMS: &[&str] = &[
    "munged",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "scancel",
    "sinfo",
];

/// A running one-node cluster; its clients need [`SlurmCluster::conf`] in `SLURM_CONF`.
pub struct SlurmCluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    /// munged, slurmctld, slurmd, in start order (stopped in reverse).
    daemons: Vec<Child>,
}

/// Whether `program` is on the PATH (or in /usr/sbin, where Debian puts the daemons).
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A TCP port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// `key=value` fields of `slurmd -C`'s first line.
fn node_layout(slurmd: &Path) -> Vec<(String, String)> {
    let out = Command::new(slurmd)
        .arg("-C")
        .output()
        .expect("slurmd -C runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_default();
    let wanted = [
        "CPUs",
        "SocketsPerBoard",
        "CoresPerSocket",
        "ThreadsPerCore",
        "RealMemory",
    ];
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| wanted.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl SlurmCluster {
    /// Starts a cluster, or `None` (a visible skip, or a failure under `SIMUBOOST_REQUIRE_KVM`,
    /// like a missing /dev/kvm) when Slurm is not installed.
    pub fn start() -> Option<SlurmCluster> {
        if let Some(missing) = PROGRAMS.iter().find(|p| find(p).is_none()) {
            crate::skip(&format!(
                "Slurm is not installed ({missing} is missing; `cargo xtask setup` installs \
                 slurmctld slurmd slurm-client munge)"
            ));
            return None;
        }
        // The munge socket path must stay under ~100 characters: a short directory in /tmp.
        let dir = tempfile::Builder::new()
            .prefix("sbslurm")
            .tempdir_in("/tmp")
            .expect("a temp dir");
        let root = dir.path().to_path_buf();
        for sub in ["state", "spool/localhost", "log"] {
            std::fs::create_dir_all(root.join(sub)).expect("cluster directories");
        }
        let key = root.join("munge.key");
        let mut bytes = vec![0u8; 1024];
        {
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .expect("random bytes for the munge key");
        }
        std::fs::write(&key, &bytes).expect("munge key");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("munge key mode");
        }
        let socket = root.join("munge.sock");
        let layout: String = node_layout(&find("slurmd").expect("slurmd"))
            .iter()
            .map(|(k, v)| format!(" {k}={v}"))
            .collect();
        let (ctld_port, d_port) = (free_port(), free_port());
        let r = root.display();
        let conf_text = format!(
            "ClusterName=simuboost\n\
             SlurmctldHost=localhost(127.0.0.1)\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             SlurmctldPort={ctld_port}\n\
             SlurmdPort={d_port}\n\
             AuthType=auth/munge\n\
             AuthInfo=socket={sock}\n\
             CredType=cred/munge\n\
             StateSaveLocation={r}/state\n\
             SlurmdSpoolDir={r}/spool/%n\n\
             SlurmctldPidFile={r}/slurmctld.pid\n\
             SlurmdPidFile={r}/slurmd.pid\n\
             SlurmctldLogFile={r}/log/slurmctld.log\n\
             SlurmdLogFile={r}/log/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             MailProg=/bin/true\n\
             MinJobAge=4\n\
             ReturnToService=2\n\
             SchedulerType=sched/backfill\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core\n\
             NodeName=localhost NodeAddr=127.0.0.1{layout} State=UNKNOWN\n\
             PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
            sock = socket.display(),
        );
        let conf = root.join("slurm.conf");
        std::fs::write(&conf, conf_text).expect("slurm.conf");
        let mut cluster = SlurmCluster {
            dir,
            conf: conf.clone(),
            daemons: Vec::new(),
        };
        let log = |name: &str| {
            std::fs::File::create(root.join("log").join(name)).expect("daemon log file")
        };
        cluster.spawn(
            Command::new(find("munged").expect("munged"))
                .arg("-F")
                .arg("-f")
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg(format!("--pid-file={r}/munged.pid"))
                .arg(format!("--seed-file={r}/munge.seed"))
                .arg(format!("--log-file={r}/log/munged.log")),
            log("munged.out"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "munged did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster.spawn(
            Command::new(find("slurmctld").expect("slurmctld"))
                .args(["-D", "-f"])
                .arg(&conf),
            log("slurmctld.out"),
        );
        cluster.spawn(
            Command::new(find("slurmd").expect("slurmd"))
                .args(["-D", "-N", "localhost", "-f"])
                .arg(&conf),
            log("slurmd.out"),
        );
        cluster.wait_idle();
        Some(cluster)
    }

    fn spawn(&mut self, cmd: &mut Command, log: std::fs::File) {
        let err = log.try_clone().expect("log file");
        let child = cmd
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        self.daemons.push(child);
    }

    /// Waits until the node is idle (under a second here; 30 s at most).
    fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = self
                .command("sinfo")
                .args(["-h", "-N", "-o", "%t"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            if state == "idle" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Slurm node is not idle after 30 s (state {state:?}); logs in {}",
                self.dir.path().join("log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The cluster's slurm.conf: clients need it in `SLURM_CONF`.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// A client command of this cluster (`SLURM_CONF` set).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    /// The daemons' logs.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        // Jobs first, so no replay outlives its cluster (linuxproc tracks them by parent pid
        // only while slurmd runs).
        let _ = self
            .command("scancel")
            .args(["--user", "root"])
            .stderr(Stdio::null())
            .status();
        for child in self.daemons.iter_mut().rev() {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill has no memory-safety preconditions; the pid is our child, not
                // yet waited for, so it cannot name another process.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}
