//! Usage statistics of a kernel's processes, read from `/proc`.

use std::path::Path;

/// CPU time (ms, including reaped children), resident memory, and storage read/write bytes
/// summed over the processes of process group `pgid`.
pub fn group_usage(pgid: i32) -> (u64, u64, u64, u64) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let (mut cpu_ticks, mut rss, mut read, mut write) = (0u64, 0u64, 0u64, 0u64);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (0, 0, 0, 0);
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name, which may itself contain spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<i64>().ok()).unwrap_or(0);
        if field(2) != i64::from(pgid) {
            continue;
        }
        // utime, stime, cutime, cstime are fields 14..=17 of the line (11..=14 here).
        cpu_ticks += (field(11) + field(12) + field(13) + field(14)).max(0) as u64;
        rss += field(21).max(0) as u64 * page;
        if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
            for line in io.lines() {
                if let Some(v) = line.strip_prefix("read_bytes: ") {
                    read += v.trim().parse::<u64>().unwrap_or(0);
                } else if let Some(v) = line.strip_prefix("write_bytes: ") {
                    write += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    (cpu_ticks * 1000 / ticks, rss, read, write)
}

/// Pids of the members of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let pgrp =
            stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().nth(2)).and_then(|f| f.parse::<i32>().ok());
        if pgrp == Some(pgid) {
            pids.push(pid);
        }
    }
    pids
}

/// Total size of the regular files under `dir` (symlinks not followed; bounded walk).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    let mut budget = 100_000usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return total;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}
