//! `--call targets` and `--call outline`: a Dockerfile's stages with their
//! descriptions, and what a target takes (build arguments, secrets, SSH), as
//! BuildKit's subrequests report them and buildx prints them.

use crate::check::reachable;
use crate::parser::{Args, Dockerfile, Instruction, Kind};
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

fn stage_name(from: &Instruction) -> String {
    let w: Vec<String> = from.words().into_iter().map(|(w, _)| w).collect();
    if w.len() >= 3 && w[1].eq_ignore_ascii_case("as") {
        w[2].to_lowercase()
    } else {
        String::new()
    }
}

/// Every stage, the last one the default.
pub fn targets(df: &Dockerfile) -> Vec<Target> {
    let froms: Vec<&Instruction> = df
        .instructions
        .iter()
        .filter(|i| i.kind == Kind::From)
        .collect();
    froms
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = stage_name(f);
            Target {
                description: doc_comment(f, &name),
                name,
                default: i + 1 == froms.len(),
            }
        })
        .collect()
}

/// buildx's table: `TARGET  DESCRIPTION`, the default marked.
pub fn print_targets(ts: &[Target]) -> String {
    let rows: Vec<(String, String)> = ts
        .iter()
        .map(|t| {
            let name = match (t.name.is_empty(), t.default) {
                (true, true) => "(default)".to_string(),
                (false, true) => format!("{} (default)", t.name),
                _ => t.name.clone(),
            };
            (name, t.description.clone())
        })
        .collect();
    table(&[("TARGET", "DESCRIPTION")], &rows, 1)
}

/// Columns padded as Go's tabwriter pads them (`padding` spaces after the widest).
fn table(head: &[(&str, &str)], rows: &[(String, String)], padding: usize) -> String {
    let w = head
        .iter()
        .map(|(a, _)| a.len())
        .chain(rows.iter().map(|(a, _)| a.len()))
        .max()
        .unwrap_or(0)
        + padding;
    let mut out = String::new();
    for (a, b) in head
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .chain(rows.iter().cloned())
    {
        out.push_str(format!("{a:<w$}{b}").trim_end());
        out.push('\n');
    }
    out
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
    let mut stage = None::<usize>;
    let mut out = Outline::default();
    let mut n_stages = 0;
    for ins in &df.instructions {
        if ins.kind == Kind::From {
            stage = Some(n_stages);
            n_stages += 1;
        }
        let defs = |ins: &Instruction| -> Vec<(String, Option<String>)> {
            let Args::Text(t) = &ins.args else {
                return Vec::new();
            };
            crate::lexer::split_words(t, ins.escape)
                .into_iter()
                .map(|w| match w.split_once('=') {
                    Some((k, v)) => (
                        k.to_string(),
                        Some(
                            crate::lexer::expand_word(
                                v,
                                &Vec::<(String, String)>::new(),
                                ins.escape,
                            )
                            .unwrap_or_else(|_| v.to_string()),
                        ),
                    ),
                    None => (w, None),
                })
                .collect()
        };
        match (stage, ins.kind) {
            (None, Kind::Arg) => {
                for (k, v) in defs(ins) {
                    let d = doc_comment(ins, &k);
                    global.insert(k.clone(), (ins.line, value(&k, v.as_deref()), d));
                }
            }
            (Some(i), _) if !reach.contains(&i) => {}
            (Some(_), Kind::From) => {
                for (k, g) in &global {
                    if ins.original.contains(&format!("${k}"))
                        || ins.original.contains(&format!("${{{k}"))
                    {
                        args.entry(k.clone()).or_insert_with(|| g.clone());
                    }
                }
                let name = stage_name(ins);
                if target.is_some_and(|t| t.eq_ignore_ascii_case(&name))
                    || (target.is_none() && stage == Some(reach.iter().copied().max().unwrap_or(0)))
                {
                    out.description = doc_comment(ins, &name);
                    out.name = name;
                }
            }
            (Some(_), Kind::Arg) => {
                for (k, v) in defs(ins) {
                    let (line, gv, gd) =
                        global
                            .get(&k)
                            .cloned()
                            .unwrap_or((ins.line, String::new(), String::new()));
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
            (Some(_), Kind::Run) => {
                for f in ins.flags.iter().filter(|f| f.name == "mount") {
                    let kv: Vec<(String, String)> = f
                        .value
                        .as_deref()
                        .unwrap_or("")
                        .split(',')
                        .map(|p| match p.split_once('=') {
                            Some((k, v)) => (k.to_lowercase(), v.to_string()),
                            None => (p.to_lowercase(), "true".to_string()),
                        })
                        .collect();
                    let get = |k: &str| kv.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
                    let required = get("required").is_some_and(|v| v == "true");
                    match get("type").as_deref() {
                        Some("secret") => {
                            let id = get("id")
                                .or_else(|| {
                                    get("target")
                                        .or_else(|| get("dst"))
                                        .and_then(|t| t.rsplit('/').next().map(str::to_string))
                                })
                                .unwrap_or_default();
                            secrets.entry(id).or_insert((ins.line, required));
                        }
                        Some("ssh") => {
                            let id = get("id").unwrap_or_else(|| "default".into());
                            ssh.entry(id).or_insert((ins.line, required));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
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
        let mut rows = vec![("TARGET:".to_string(), name.to_string())];
        if !o.description.is_empty() {
            rows.push(("DESCRIPTION:".into(), o.description.clone()));
        }
        out.push_str(&table(&[], &rows, 1));
        out.push('\n');
    }
    let three = |head: [&str; 3], rows: Vec<[String; 3]>| -> String {
        let w0 = rows
            .iter()
            .map(|r| r[0].len())
            .chain([head[0].len()])
            .max()
            .unwrap_or(0)
            + 3;
        let w1 = rows
            .iter()
            .map(|r| r[1].len())
            .chain([head[1].len()])
            .max()
            .unwrap_or(0)
            + 3;
        let mut s = String::new();
        for r in std::iter::once(head.map(str::to_string)).chain(rows) {
            s.push_str(format!("{:<w0$}{:<w1$}{}", r[0], r[1], r[2]).trim_end());
            s.push('\n');
        }
        s.push('\n');
        s
    };
    if !o.args.is_empty() {
        out.push_str(&three(
            ["BUILD ARG", "VALUE", "DESCRIPTION"],
            o.args
                .iter()
                .map(|(a, b, c)| [a.clone(), b.clone(), c.clone()])
                .collect(),
        ));
    }
    for (head, list) in [("SECRET", &o.secrets), ("SSH", &o.ssh)] {
        if !list.is_empty() {
            let rows: Vec<(String, String)> = list
                .iter()
                .map(|(n, r)| (n.clone(), if *r { "true".into() } else { String::new() }))
                .collect();
            let w = rows
                .iter()
                .map(|(a, _)| a.len())
                .chain([head.len()])
                .max()
                .unwrap_or(0)
                + 3;
            for (a, b) in std::iter::once((head.to_string(), "REQUIRED".to_string())).chain(rows) {
                out.push_str(format!("{a:<w$}{b}").trim_end());
                out.push('\n');
            }
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
