//! RUN steps whose command cannot start: the step fails with the reason, not with the
//! "exit code: 127" of a command that ran and was not found.

use super::Case;

fn failed_with(run: &super::Run, why: &str) {
    assert!(!run.ok, "{}", run.stderr);
    let error = run
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("ERROR: "))
        .unwrap_or_else(|| panic!("no error line in\n{}", run.stderr));
    assert!(error.contains(why), "{error}");
    assert!(!error.contains("exit code"), "{error}");
}

#[test]
#[ignore = "end-to-end: needs scripts/setup.sh's registry and user; run scripts/test.sh"]
fn a_command_that_cannot_start_fails_with_the_reason() {
    let case = Case::new(
        "FROM REGISTRY/library/busybox:latest\n\
         RUN true\n\
         USER nobody-here\n\
         RUN id\n",
    );
    let run = super::store::build(&case, &[], &[]);
    failed_with(&run, "unable to find user nobody-here");
    assert!(run.stderr.contains("(line 4)"), "{}", run.stderr);

    let missing = Case::new("FROM REGISTRY/library/busybox:latest\nRUN [\"no-such-program\"]\n");
    let run = super::store::build(&missing, &[], &[]);
    failed_with(
        &run,
        "exec: \"no-such-program\": executable file not found in $PATH",
    );
}
