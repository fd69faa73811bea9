//! A contender's process, measured from outside through `/proc/<pid>`: CPU time (user +
//! system, all threads) sampled with its wall-clock time, so that the CPU of any wall-clock
//! window can be read off afterwards, and peak RSS (`VmHWM`).
//!
//! The final CPU time of a process that exits by itself is read from its zombie, before it is
//! reaped (`/proc/<pid>/stat` of a zombie still holds the whole thread group's times); its
//! peak RSS is the last `VmHWM` read while it was alive (a zombie has no memory map), at most
//! one sampling period earlier.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

/// How often a running contender is sampled.
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(10);

/// `/proc` reports CPU time in clock ticks of `USER_HZ`, which is 100 on every Linux ABI this
/// runs on (x86_64, aarch64).
const USER_HZ: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: SystemTime,
    /// User + system CPU seconds so far, all threads.
    pub cpu_s: f64,
    /// `VmHWM` in bytes; `None` for a zombie.
    pub peak_rss_bytes: Option<u64>,
    pub zombie: bool,
}

/// A spawned contender; killed (SIGKILL) when dropped while still running.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    pid: u32,
    log: PathBuf,
    samples: Vec<Sample>,
    peak_rss_bytes: u64,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `command` with stdout going to `stdout` (a file, or nowhere) and stderr to
    /// `log`, without the backtrace switches a developer's shell may set (`RUST_BACKTRACE`,
    /// `RUST_LIB_BACKTRACE`): a contender runs as its image or package runs it.
    pub fn spawn(
        name: &str,
        mut command: Command,
        stdout: Option<&Path>,
        log: &Path,
    ) -> Result<Proc> {
        let stderr = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let stdout = match stdout {
            Some(path) => Stdio::from(
                File::create(path).with_context(|| format!("create {}", path.display()))?,
            ),
            None => Stdio::null(),
        };
        command
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = command
            .spawn()
            .with_context(|| format!("start {name}: {command:?}"))?;
        let pid = child.id();
        Ok(Proc {
            name: name.to_string(),
            child,
            pid,
            log: log.to_path_buf(),
            samples: Vec::new(),
            peak_rss_bytes: 0,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads `/proc/<pid>` once and records the sample.
    pub fn sample(&mut self) -> Result<Sample> {
        let at = SystemTime::now();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .with_context(|| format!("{} (pid {}) is gone", self.name, self.pid))?;
        let (zombie, cpu_s) = parse_stat(&stat)
            .with_context(|| format!("unexpected /proc/{}/stat: {stat}", self.pid))?;
        let peak_rss_bytes = if zombie {
            None
        } else {
            std::fs::read_to_string(format!("/proc/{}/status", self.pid))
                .ok()
                .and_then(|s| parse_vm_hwm(&s))
        };
        if let Some(hwm) = peak_rss_bytes {
            self.peak_rss_bytes = self.peak_rss_bytes.max(hwm);
        }
        let sample = Sample {
            at,
            cpu_s,
            peak_rss_bytes,
            zombie,
        };
        self.samples.push(sample);
        Ok(sample)
    }

    /// The highest `VmHWM` seen, bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.peak_rss_bytes
    }

    /// CPU seconds used up to wall-clock time `t`, interpolated between samples (0 before
    /// the first one, the last value after the last one).
    pub fn cpu_at(&self, t: SystemTime) -> f64 {
        cpu_at(&self.samples, t)
    }

    /// CPU seconds of the last sample.
    pub fn cpu_s(&self) -> f64 {
        self.samples.last().map_or(0.0, |s| s.cpu_s)
    }

    /// Whether the process has exited (it is then reaped).
    pub fn exited(&self) -> Option<ExitStatus> {
        self.exited
    }

    /// Samples every [`SAMPLE_PERIOD`] until the process exits by itself (at most `timeout`,
    /// then it is killed and this fails), reaps it, and returns its exit status.
    pub fn wait_sampling(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            let sample = self.sample()?;
            if sample.zombie {
                let status = self.child.wait().context("reap")?;
                self.exited = Some(status);
                return Ok(status);
            }
            if started.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{} did not finish within {timeout:?}; log: {}",
                    self.name,
                    self.log.display()
                );
            }
            std::thread::sleep(SAMPLE_PERIOD);
        }
    }

    /// Sends SIGTERM and waits (sampling) for the exit; SIGKILL after `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("run kill")?;
        if !status.success() {
            bail!("kill -TERM {} ({}) failed", self.pid, self.name);
        }
        self.wait_sampling(timeout)
    }

    /// Fails unless the process is still running, naming its log.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("try_wait")? {
            self.exited = Some(status);
            bail!(
                "{} exited early ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 20)
            );
        }
        Ok(())
    }

    /// The log file (stderr).
    pub fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `lines` lines of a text file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `(zombie, user + system CPU seconds)` from `/proc/<pid>/stat`.
fn parse_stat(stat: &str) -> Option<(bool, f64)> {
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so split after the
    // last ')'. utime and stime are fields 14 and 15, i.e. 12th and 13th after comm.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = *fields.first()? == "Z";
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((zombie, (utime + stime) / USER_HZ))
}

/// `VmHWM` from `/proc/<pid>/status`, in bytes.
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn cpu_at(samples: &[Sample], t: SystemTime) -> f64 {
    let Some(i) = samples.iter().position(|s| s.at >= t) else {
        return samples.last().map_or(0.0, |s| s.cpu_s);
    };
    if i == 0 {
        return 0.0;
    }
    let (a, b) = (samples[i - 1], samples[i]);
    let span = b.at.duration_since(a.at).unwrap_or_default().as_secs_f64();
    if span <= 0.0 {
        return b.cpu_s;
    }
    let into = t.duration_since(a.at).unwrap_or_default().as_secs_f64();
    a.cpu_s + (b.cpu_s - a.cpu_s) * (into / span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_of_a_process_whose_name_has_spaces_and_parentheses_is_parsed() {
        let stat = "4242 (tokio (worker) 1) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 \
                    12 0 9999 123456789 2222 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1";
        assert_eq!(parse_stat(stat), Some((false, 3.25)));
        let zombie = stat.replace(") S 1", ") Z 1");
        assert_eq!(parse_stat(&zombie), Some((true, 3.25)));
    }

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  999 kB\nVmHWM:\t   2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("Name:\tx\nState:\tZ (zombie)\n"), None);
    }

    #[test]
    fn cpu_between_samples_is_interpolated_and_clamped_outside_them() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let sample = |ms: u64, cpu_s: f64| Sample {
            at: t0 + Duration::from_millis(ms),
            cpu_s,
            peak_rss_bytes: None,
            zombie: false,
        };
        let samples = [sample(0, 1.0), sample(1000, 2.0), sample(2000, 4.0)];
        assert_eq!(cpu_at(&samples, t0 - Duration::from_secs(1)), 0.0);
        assert_eq!(cpu_at(&samples, t0 + Duration::from_millis(500)), 1.5);
        assert_eq!(cpu_at(&samples, t0 + Duration::from_millis(1500)), 3.0);
        assert_eq!(cpu_at(&samples, t0 + Duration::from_secs(5)), 4.0);
    }
}
