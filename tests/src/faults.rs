//! Faults the tests inject under a running gateway: a disk that fills or turns read-only
//! ([`Disk`]), a wall clock that jumps ([`FakeClock`]).

use std::path::{Path, PathBuf};
use std::process::Command;

/// An ext4 file system on a loop device, mounted at `mnt` with `errors=remount-ro` (so an
/// error turns it read-only under its writers, as a failing disk does). Unmounted on drop.
/// (Needs root and loop devices, as the network-namespace tests need root.)
pub struct Disk {
    /// Where it is mounted.
    pub mnt: PathBuf,
    dev: String,
    _image: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Disk {
    pub fn mount(mnt: &Path, megabytes: u32) -> Disk {
        let image = tempfile::tempdir().unwrap();
        let file = image.path().join("disk.img");
        run(Command::new("truncate")
            .args(["-s", &format!("{megabytes}M")])
            .arg(&file));
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&file));
        std::fs::create_dir_all(mnt).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop,errors=remount-ro"])
            .arg(&file)
            .arg(mnt));
        let dev = run(Command::new("findmnt").args(["-no", "SOURCE"]).arg(mnt));
        Disk {
            mnt: mnt.to_owned(),
            dev: dev.trim_start_matches("/dev/").to_owned(),
            _image: image,
        }
    }

    /// Writes a file until the disk is full; returns the bytes written.
    pub fn fill(&self) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.mnt.join("filler")).unwrap();
        let chunk = vec![0x5a; 1 << 16];
        let mut n = 0;
        while f.write_all(&chunk).and_then(|_| f.sync_data()).is_ok() {
            n += chunk.len() as u64;
        }
        n
    }

    pub fn free(&self) {
        std::fs::remove_file(self.mnt.join("filler")).unwrap();
        run(Command::new("sync").arg("-f").arg(&self.mnt));
    }

    /// An error in the file system: ext4 turns it read-only at once (`errors=remount-ro`).
    pub fn turn_read_only(&self) {
        std::fs::write(
            format!("/sys/fs/ext4/{}/trigger_fs_error", self.dev),
            "fault injection",
        )
        .unwrap();
    }

    /// What an operator does after a file-system error: the kernel keeps an aborted ext4
    /// read-only for good, so it is detached (lazily: the gateway still holds its file),
    /// checked and mounted again. The store's file there is a new one to the gateway.
    pub fn repair_and_mount_again(&self) {
        run(Command::new("umount").arg("-l").arg(&self.mnt));
        let file = self._image.path().join("disk.img");
        let status = Command::new("e2fsck")
            .args(["-fy"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            status.status.code().is_some_and(|c| c <= 1),
            "e2fsck: {status:?}"
        );
        // A loop device of its own: `mount -o loop` would reuse the old one, whose file
        // system the kernel still holds read-only.
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file));
        run(Command::new("mount")
            .args(["-o", "errors=remount-ro"])
            .arg(&dev)
            .arg(&self.mnt));
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        // and the loop devices the image still has
        let file = self._image.path().join("disk.img");
        if let Ok(out) = Command::new("losetup").arg("-j").arg(&file).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(dev) = line.split(':').next() {
                    let _ = Command::new("losetup").args(["-d", dev]).status();
                }
            }
        }
    }
}

/// The wall clock as the gateway sees it, through libfaketime (Debian's `libfaketime`): an
/// offset in a file the library reads again every second. The monotonic clock is left alone,
/// as it is when a VM resumes or NTP steps the clock.
pub struct FakeClock {
    file: PathBuf,
}

impl FakeClock {
    const LIB: &'static str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

    pub fn new(dir: &Path) -> FakeClock {
        assert!(
            Path::new(Self::LIB).exists(),
            "libfaketime not installed: run ./scripts/test.sh"
        );
        let clock = FakeClock {
            file: dir.join("faketime"),
        };
        clock.set("+0");
        clock
    }

    pub fn set(&self, offset: &str) {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, offset).unwrap();
        std::fs::rename(tmp, &self.file).unwrap();
    }

    /// `env ... ` to run a program on this clock (exec: the PID stays the program's).
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "env".into(),
            format!("LD_PRELOAD={}", Self::LIB),
            format!("FAKETIME_TIMESTAMP_FILE={}", self.file.display()),
            "FAKETIME_CACHE_DURATION=1".into(),
            "FAKETIME_DONT_FAKE_MONOTONIC=1".into(),
        ]
    }
}
