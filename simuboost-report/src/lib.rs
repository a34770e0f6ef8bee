//! What simuboost's binaries print, declared once: the daemon's run summary (`--json`, and
//! `summary.json` in the run directory), the replayer's per-interval report (`--json`), and the
//! exit statuses of both. The binaries serialise these types; xtask's benchmarks, the tests and
//! `simuboost-replay --all` (which reads its child processes' reports) deserialise the same
//! types, so a renamed field breaks the build instead of a dashboard.

pub mod daemon;
pub mod replay;

/// An error as a binary prints it: its message, then each cause the message so far does not
/// already say (the project's errors include their source in their own message, so printing
/// the whole chain would repeat it, e.g. an OS error twice).
pub fn error_message(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = error.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::error_message;
    use std::fmt;

    /// An error whose message says its source, as the project's do, and a context around it.
    #[derive(Debug)]
    struct Said(&'static str, Option<Box<dyn std::error::Error + 'static>>);

    impl fmt::Display for Said {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match &self.1 {
                Some(source) if self.0.ends_with(':') => write!(f, "{} {source}", self.0),
                _ => f.write_str(self.0),
            }
        }
    }

    impl std::error::Error for Said {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref()
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let os = || Box::new(std::io::Error::from_raw_os_error(12));
        let ioctl = || Said("KVM create the VM failed:", Some(os()));
        assert_eq!(
            error_message(&ioctl()),
            format!("KVM create the VM failed: {}", os())
        );
        let context = Said("restoring interval 4", Some(Box::new(ioctl())));
        assert_eq!(
            error_message(&context),
            format!("restoring interval 4: KVM create the VM failed: {}", os())
        );
    }
}
