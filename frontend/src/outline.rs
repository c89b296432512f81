//! `--call targets` and `--call outline`: a Dockerfile's stages with their
//! descriptions, and what a target takes (build arguments, secrets, SSH), as
//! BuildKit's subrequests report them and buildx prints them.

use crate::check::{reachable, stages};
use crate::compile::mounts::parse_mount;
use crate::parser::{Args, Dockerfile, Instruction, Kind};
use crate::MountKind;
use std::collections::BTreeMap;

/// A stage, for `--call targets`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `AS` name, lowercased (empty for an unnamed stage).
    pub name: String,
    pub description: String,
    pub default: bool,
}

/// `# NAME description` right above a definition: the description (BuildKit's
/// `DocComment`).
fn doc_comment(ins: &Instruction, name: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    ins.comments
        .iter()
        .find_map(|c| c.strip_prefix(&format!("{name} ")).map(str::to_string))
        .unwrap_or_default()
}

/// Every stage, the last one the default.
pub fn targets(df: &Dockerfile) -> Vec<Target> {
    let (_, stages) = stages(df);
    let n = stages.len();
    stages
        .iter()
        .enumerate()
        .map(|(i, st)| {
            let name = st.name.clone().unwrap_or_default();
            Target {
                description: doc_comment(st.from, &name),
                name,
                default: i + 1 == n,
            }
        })
        .collect()
}

/// buildx's table: `TARGET  DESCRIPTION`, the default marked.
pub fn print_targets(ts: &[Target]) -> String {
    let mut rows = vec![row(&["TARGET", "DESCRIPTION"])];
    rows.extend(ts.iter().map(|t| {
        let name = match (t.name.is_empty(), t.default) {
            (true, true) => "(default)".to_string(),
            (false, true) => format!("{} (default)", t.name),
            _ => t.name.clone(),
        };
        vec![name, t.description.clone()]
    }));
    table(&rows, 1)
}

/// Rows in columns padded as Go's tabwriter pads them: each column but the last as
/// wide as its widest cell plus `padding`; trailing blanks trimmed.
fn table(rows: &[Vec<String>], padding: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols.saturating_sub(1))
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
                + padding
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            match widths.get(c) {
                Some(&w) if c + 1 < r.len() => line.push_str(&format!("{cell:<w$}")),
                _ => line.push_str(cell),
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// What a target takes.
#[derive(Debug, Default, PartialEq)]
pub struct Outline {
    pub name: String,
    pub description: String,
    /// (name, default value, description), in the order they are defined.
    pub args: Vec<(String, String, String)>,
    /// (id, required).
    pub secrets: Vec<(String, bool)>,
    pub ssh: Vec<(String, bool)>,
}

/// The outline of `target` (`None`: the last stage): the ARGs its stages declare and
/// the global ARGs their FROMs use, the secrets and SSH sockets their RUNs mount.
pub fn outline(df: &Dockerfile, target: Option<&str>, build_args: &[(String, String)]) -> Outline {
    let reach = reachable(df, target);
    let mut global: BTreeMap<String, (usize, String, String)> = BTreeMap::new();
    let mut args: BTreeMap<String, (usize, String, String)> = BTreeMap::new();
    let mut secrets: BTreeMap<String, (usize, bool)> = BTreeMap::new();
    let mut ssh: BTreeMap<String, (usize, bool)> = BTreeMap::new();
    let value = |k: &str, default: Option<&str>| -> String {
        build_args
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .or_else(|| default.map(str::to_string))
            .unwrap_or_default()
    };
    let defs = |ins: &Instruction| -> Vec<(String, Option<String>)> {
        let Args::Text(t) = &ins.args else {
            return Vec::new();
        };
        crate::lexer::split_words(t, ins.escape)
            .into_iter()
            .map(|w| match w.split_once('=') {
                Some((k, v)) => {
                    let none = Vec::<(String, String)>::new();
                    let v = crate::lexer::expand_word(v, &none, ins.escape)
                        .unwrap_or_else(|_| v.to_string());
                    (k.to_string(), Some(v))
                }
                None => (w, None),
            })
            .collect()
    };
    let (global_ins, stages) = stages(df);
    for ins in global_ins.iter().filter(|i| i.kind == Kind::Arg) {
        for (k, v) in defs(ins) {
            let d = doc_comment(ins, &k);
            global.insert(k.clone(), (ins.line, value(&k, v.as_deref()), d));
        }
    }
    let mut out = Outline::default();
    let target_idx = match target {
        Some(t) => stages
            .iter()
            .position(|s| s.name.as_deref() == Some(t.to_lowercase().as_str())),
        None => stages.len().checked_sub(1),
    };
    for (i, st) in stages.iter().enumerate().filter(|(i, _)| reach.contains(i)) {
        for (k, g) in &global {
            let o = &st.from.original;
            if o.contains(&format!("${k}")) || o.contains(&format!("${{{k}")) {
                args.entry(k.clone()).or_insert_with(|| g.clone());
            }
        }
        if Some(i) == target_idx {
            out.name = st.name.clone().unwrap_or_default();
            out.description = doc_comment(st.from, &out.name);
        }
        for ins in &st.commands {
            match ins.kind {
                Kind::Arg => {
                    for (k, v) in defs(ins) {
                        let (line, gv, gd) = global.get(&k).cloned().unwrap_or((
                            ins.line,
                            String::new(),
                            String::new(),
                        ));
                        let d = match doc_comment(ins, &k) {
                            d if d.is_empty() => gd,
                            d => d,
                        };
                        let v = match v {
                            Some(v) => value(&k, Some(&v)),
                            None if !gv.is_empty() => gv,
                            None => value(&k, None),
                        };
                        args.entry(k).or_insert((line.min(ins.line), v, d));
                    }
                }
                Kind::Run => {
                    // The mounts as RUN parses them (ids defaulted as it defaults them).
                    let as_written = |v: &str| Ok(v.to_string());
                    for f in ins.flags.iter().filter(|f| f.name == "mount") {
                        let Ok(m) = parse_mount(f.value.as_deref().unwrap_or(""), &as_written)
                        else {
                            continue;
                        };
                        let into = match m.kind {
                            MountKind::Secret => &mut secrets,
                            MountKind::Ssh => &mut ssh,
                            _ => continue,
                        };
                        into.entry(m.id).or_insert((ins.line, m.required));
                    }
                }
                _ => {}
            }
        }
    }
    let mut a: Vec<_> = args.into_iter().collect();
    a.sort_by_key(|(k, (l, _, _))| (*l, k.clone()));
    out.args = a.into_iter().map(|(k, (_, v, d))| (k, v, d)).collect();
    let sorted = |m: BTreeMap<String, (usize, bool)>| {
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by_key(|(k, (l, _))| (*l, k.clone()));
        v.into_iter().map(|(k, (_, r))| (k, r)).collect::<Vec<_>>()
    };
    out.secrets = sorted(secrets);
    out.ssh = sorted(ssh);
    out
}

/// buildx's print of an outline.
pub fn print_outline(o: &Outline) -> String {
    let mut out = String::new();
    if !o.name.is_empty() || !o.description.is_empty() {
        let name = if o.name.is_empty() {
            "(default)"
        } else {
            &o.name
        };
        let mut rows = vec![row(&["TARGET:", name])];
        if !o.description.is_empty() {
            rows.push(row(&["DESCRIPTION:", &o.description]));
        }
        out.push_str(&table(&rows, 1));
        out.push('\n');
    }
    if !o.args.is_empty() {
        let mut rows = vec![row(&["BUILD ARG", "VALUE", "DESCRIPTION"])];
        rows.extend(
            o.args
                .iter()
                .map(|(a, b, c)| vec![a.clone(), b.clone(), c.clone()]),
        );
        out.push_str(&table(&rows, 3));
        out.push('\n');
    }
    for (head, list) in [("SECRET", &o.secrets), ("SSH", &o.ssh)] {
        if !list.is_empty() {
            let mut rows = vec![row(&[head, "REQUIRED"])];
            rows.extend(
                list.iter()
                    .map(|(n, r)| row(&[n, if *r { "true" } else { "" }])),
            );
            out.push_str(&table(&rows, 3));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DF: &str = "ARG GO_VERSION=1.22\n# REGISTRY where images come from\nARG REGISTRY=docker.io\n\
        # base the common base\nFROM ${REGISTRY}/library/golang:${GO_VERSION} AS base\n\
        # MODE how to build\nARG MODE=release\nRUN --mount=type=secret,id=npmrc,required=true --mount=type=ssh true\n\
        FROM scratch AS unused\nARG NOPE\n\
        # app the app itself\nFROM base AS app\nRUN --mount=type=secret,target=/run/token true\n";

    #[test]
    fn targets_list_every_stage_and_the_default() {
        let df = crate::parser::parse(DF, "Dockerfile").expect("parse");
        let ts = targets(&df);
        assert_eq!(ts.len(), 3);
        assert_eq!(
            print_targets(&ts),
            "TARGET        DESCRIPTION\nbase          the common base\nunused\napp (default) the app itself\n"
        );
    }

    #[test]
    fn an_outline_lists_what_the_target_takes() {
        let df = crate::parser::parse(DF, "Dockerfile").expect("parse");
        let o = outline(&df, None, &[("MODE".into(), "debug".into())]);
        assert_eq!(o.name, "app");
        assert_eq!(o.description, "the app itself");
        assert_eq!(
            o.args,
            vec![
                ("GO_VERSION".into(), "1.22".into(), String::new()),
                (
                    "REGISTRY".into(),
                    "docker.io".into(),
                    "where images come from".into()
                ),
                ("MODE".into(), "debug".into(), "how to build".into()),
            ]
        );
        assert_eq!(
            o.secrets,
            vec![("npmrc".into(), true), ("token".into(), false)]
        );
        assert_eq!(o.ssh, vec![("default".into(), false)]);
        let text = print_outline(&o);
        assert!(text.starts_with("TARGET:      app\nDESCRIPTION: the app itself\n\nBUILD ARG    VALUE       DESCRIPTION\nGO_VERSION   1.22\n"), "{text}");
        assert!(
            text.contains("\nSECRET   REQUIRED\nnpmrc    true\ntoken\n"),
            "{text}"
        );
    }
}
