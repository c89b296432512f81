//! kiln's build checks over BuildKit's own check test cases
//! (`tests/fixtures/buildkit_check_cases.json`, extracted from BuildKit's
//! `dockerfile_check_test.go` by `scripts/extract_check_cases.py`): the same findings
//! in a build (rule, message, line, for the stages the build runs) and in
//! `--call check` (rule and message, for every stage).

use kiln_frontend::check::{self, Config, Options};
use kiln_frontend::dockerignore::{read_patterns, Matcher};
use serde_json::Value;
use std::collections::BTreeMap;

/// Cases kiln knows it reports differently, with the reason.
const DIFFERENT: &[(&str, &str)] = &[(
    "testWarningsBeforeError#1",
    "kiln's parser stops at the unknown instruction before any check runs",
)];

fn expected(ws: &Value, with_line: bool) -> Vec<String> {
    let mut v: Vec<String> = ws
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let (r, d) = (
                w["rule"].as_str().unwrap_or(""),
                w["detail"].as_str().unwrap_or(""),
            );
            if with_line {
                format!("{r}: {d} (line {})", w["line"])
            } else {
                format!("{r}: {d}")
            }
        })
        .collect();
    v.sort();
    v
}

#[test]
fn buildkit_s_check_cases_give_the_same_findings() {
    let fixture: Value =
        serde_json::from_str(include_str!("fixtures/buildkit_check_cases.json")).expect("fixture");
    let cases = fixture["cases"].as_array().expect("cases");
    assert!(cases.len() >= 80, "{} cases", cases.len());
    let mut failures = BTreeMap::new();
    let mut passed = 0;
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let text = case["dockerfile"].as_str().expect("dockerfile");
        let attrs: Vec<(String, String)> = case["attrs"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
            .collect();
        let build_args: Vec<(String, String)> = attrs
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("build-arg:")
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
        let target = attrs
            .iter()
            .find(|(k, _)| k == "target")
            .map(|(_, v)| v.as_str());
        let result = (|| -> Result<(), String> {
            let df = kiln_frontend::parser::parse(text, "Dockerfile").map_err(|e| e.to_string())?;
            let cfg = check::config(&df, &build_args).unwrap_or_else(|_| Config::default());
            let ignore = case["dockerignore"]
                .as_str()
                .map(|t| Matcher::new(&read_patterns(t)).expect("patterns"));
            let automatic: Vec<(String, String)> = ["BUILD", "TARGET"]
                .iter()
                .flat_map(|p| {
                    [
                        (format!("{p}PLATFORM"), "linux/amd64".to_string()),
                        (format!("{p}OS"), "linux".to_string()),
                        (format!("{p}ARCH"), "amd64".to_string()),
                        (format!("{p}VARIANT"), String::new()),
                    ]
                })
                .collect();
            let env = |_: &str| vec!["PATH".to_string()];
            let reach = check::reachable(&df, target);
            let run = |stages| {
                check::check(
                    &df,
                    &cfg,
                    &Options {
                        build_args: &build_args,
                        automatic_args: &automatic,
                        stages,
                        ignore: ignore.as_ref(),
                        image_env: &env,
                    },
                )
            };
            // A build: the stages it runs, with lines.
            let build = run(Some(&reach));
            let mut got: Vec<String> = build.findings.iter().map(|f| f.short()).collect();
            got.sort();
            let want = expected(&case["warnings"], true);
            if got != want {
                return Err(format!("build:\n  got  {got:?}\n  want {want:?}"));
            }
            if let Some(e) = case["build_err"]
                .as_str()
                .filter(|e| e.starts_with("lint violation"))
            {
                if build.error_message().as_deref() != Some(e) {
                    return Err(format!(
                        "error: got {:?}, want {e:?}",
                        build.error_message()
                    ));
                }
            } else if build.error_message().is_some() {
                return Err(format!("unexpected error {:?}", build.error_message()));
            }
            // --call check: every stage, rule and message.
            let all = run(None);
            let mut got: Vec<String> = all
                .findings
                .iter()
                .map(|f| format!("{}: {}", f.rule, f.detail))
                .collect();
            got.sort();
            let want = expected(
                if case.get("unmarshal_warnings").is_some() {
                    &case["unmarshal_warnings"]
                } else {
                    &case["warnings"]
                },
                false,
            );
            if got != want {
                return Err(format!("check:\n  got  {got:?}\n  want {want:?}"));
            }
            Ok(())
        })();
        let known = DIFFERENT.iter().find(|(n, _)| *n == name);
        match (result, known) {
            (Ok(()), None) => passed += 1,
            (Ok(()), Some(_)) => {
                failures.insert(
                    name.to_string(),
                    "now passes: take it off DIFFERENT".to_string(),
                );
            }
            (Err(_), Some(_)) => {}
            (Err(e), None) => {
                failures.insert(name.to_string(), format!("{e}\n{text}"));
            }
        }
    }
    let report: Vec<String> = failures
        .iter()
        .map(|(n, e)| format!("--- {n}: {e}"))
        .collect();
    assert!(
        failures.is_empty(),
        "{passed}/{} cases equal; different:\n{}",
        cases.len(),
        report.join("\n")
    );
}
