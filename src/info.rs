//! `kiln info`: the machine's checks (`kiln_executor::probe`), printed with their
//! verdicts and fixes.

use anyhow::Result;
use kiln_executor::probe::{self, Verdict};
use std::path::PathBuf;

/// Prints the checks; fails when a check kiln cannot build without does.
pub fn info(root: Option<PathBuf>) -> Result<()> {
    let (checks, store_line) = probe::machine(root);
    let mut failed = false;
    for c in &checks {
        let tag = match c.verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => {
                failed = true;
                "FAIL"
            }
            Verdict::Info => "INFO",
        };
        println!("[{tag}] {:<20} {}", c.name, c.detail);
        if let Some(f) = &c.fix {
            println!("       {:<20} fix: {f}", "");
        }
    }
    if let Some(s) = store_line {
        println!("[INFO] {:<20} {s}", "store");
    }
    if failed {
        anyhow::bail!("kiln cannot build on this machine until the checks marked FAIL pass");
    }
    Ok(())
}
