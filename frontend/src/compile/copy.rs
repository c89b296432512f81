//! COPY and ADD: sources, `--from`, `--chown`/`--chmod`, `--parents`, `--exclude`,
//! here-documents, and the step they add.

use super::*;
use crate::remote;

impl Compiler<'_> {
    pub(super) fn copy(
        &mut self,
        idx: usize,
        ins: &Instruction,
        st: &mut StageResult,
        label: String,
    ) -> Result<()> {
        let vars = st.env.clone();
        let is_add = ins.kind == Kind::Add;
        let stage_label = self.progress_prefix(idx, &st.platform.clone());
        let mut from = CopyFrom::Context;
        let mut chown = None;
        let mut chmod_raw = None;
        let mut chmod = None;
        let mut parents = false;
        let mut link = false;
        let mut excludes = Vec::new();
        let mut checksum = None;
        let mut keep_git_dir = false;
        let mut unpack = true;
        let mut inputs = vec![st.node];
        for f in &ins.flags {
            let raw = f.value.clone().unwrap_or_default();
            let val = self.word(&raw, &vars, f.at)?;
            let flag_bool = |v: &Option<String>| -> Result<bool> {
                match v.as_deref() {
                    None | Some("") | Some("true") => Ok(true),
                    Some("false") => Ok(false),
                    Some(o) => {
                        Err(self.err(f.at, format!("--{}={o}: expected true or false", f.name)))
                    }
                }
            };
            match f.name.as_str() {
                "from" => {
                    let node = self.stage_or_image(&val, idx, f.at, &stage_label)?;
                    from = CopyFrom::Step(node);
                    inputs.push(node);
                }
                "chown" => chown = Some(val),
                "chmod" => {
                    let m = u32::from_str_radix(&val, 8).ok().filter(|m| *m <= 0o7777);
                    chmod = Some(m.ok_or_else(|| {
                        self.err(
                            f.at,
                            format!("invalid chmod parameter: '{val}'. it should be octal string and between 0 and 07777"),
                        )
                    })?);
                    chmod_raw = Some(val);
                }
                "link" => link = flag_bool(&f.value)?,
                "parents" => parents = flag_bool(&f.value)?,
                "exclude" => excludes.push(val),
                "checksum" => checksum = Some(val),
                "keep-git-dir" => keep_git_dir = flag_bool(&f.value)?,
                "unpack" => unpack = flag_bool(&f.value)?,
                other => {
                    return Err(self.err(f.at, format!("{} --{other} is not supported", ins.kind)))
                }
            }
        }
        let words = ins.words();
        let Some(((raw_dest, dest_at), src_words)) = words.split_last() else {
            return Err(self.err(
                ins.args_at(),
                format!("{} requires sources and a destination", ins.kind),
            ));
        };
        let mut docs = ins.heredocs.iter();
        let mut srcs = Vec::new();
        let mut shown_paths = Vec::new();
        let mut shown_docs = Vec::new();
        for (w, at) in src_words {
            let is_doc = matches!(ins.args, Args::Text(_)) && parser::heredoc_opener(w).is_some();
            if is_doc {
                let Some(d) = docs.next() else {
                    return Err(self.err(*at, "here-document without content"));
                };
                let mut data = d.text();
                if d.expand {
                    let lex = Lex {
                        skip_quotes: true,
                        ..Lex::new(self.escape)
                    };
                    data = lex.process(&data, &vars).map_err(|e| self.err(*at, e))?.0;
                }
                shown_docs.push(format!("<<{}", d.name));
                srcs.push(Source::Inline(InlineFile {
                    name: d.name.clone(),
                    data,
                    mode: 0o644,
                }));
                continue;
            }
            let p = self.word(w, &vars, *at)?;
            shown_paths.push(p.clone());
            if remote::is_http_url(&p) || remote::is_git_url(&p) {
                if !is_add {
                    return Err(self.err(
                        *at,
                        format!("source can't be a URL for COPY: {p} (use ADD)"),
                    ));
                }
                if remote::is_git_url(&p) {
                    let remote::GitRef {
                        url,
                        reference,
                        subdir,
                    } = remote::GitRef::parse(&p);
                    srcs.push(Source::Git {
                        url,
                        reference,
                        subdir,
                        keep_git_dir,
                    });
                    continue;
                }
                let name = p
                    .split(['?', '#'])
                    .next()
                    .and_then(|u| u.splitn(4, '/').nth(3))
                    .and_then(|path| path.rsplit('/').next())
                    .filter(|b| !b.is_empty() && *b != ".")
                    .unwrap_or("__unnamed__")
                    .to_string();
                srcs.push(Source::Url {
                    url: p,
                    checksum: None,
                    name,
                });
            } else {
                srcs.push(Source::Path(p));
            }
        }
        if let Some(sum) = checksum {
            let at = ins.flag("checksum").map_or(ins.at, |f| f.at);
            let urls = srcs
                .iter()
                .filter(|s| matches!(s, Source::Url { .. }))
                .count();
            if srcs.len() != 1 {
                return Err(self.err(at, "checksum can't be specified for multiple sources"));
            }
            if urls != 1 {
                return Err(self.err(at, "checksum can't be specified for non-HTTP(S) sources"));
            }
            let Some(hex) = sum
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            else {
                return Err(self.err(
                    at,
                    format!("invalid checksum {sum:?}: expected sha256:<64 hex digits>"),
                ));
            };
            if let Some(Source::Url { checksum, .. }) = srcs.first_mut() {
                *checksum = Some(format!("sha256:{}", hex.to_ascii_lowercase()));
            }
        }
        let raw_dest = self.word(raw_dest, &vars, *dest_at)?;
        let cwd = if st.config.config.working_dir.is_empty() {
            "/"
        } else {
            &st.config.config.working_dir
        };
        let mut dest = if raw_dest.starts_with('/') {
            crate::path::clean(&raw_dest)
        } else {
            crate::path::clean(&format!("{cwd}/{raw_dest}"))
        };
        if (raw_dest.ends_with('/')
            || raw_dest == "."
            || raw_dest.ends_with("/.")
            || raw_dest.is_empty())
            && dest != "/"
        {
            dest.push('/');
        }
        let mut hist = String::from(if is_add { "ADD" } else { "COPY" });
        if parents {
            hist.push_str(" --parents");
        }
        if let Some(c) = &chown {
            hist.push_str(&format!(" --chown={c}"));
        }
        if let Some(c) = &chmod_raw {
            hist.push_str(&format!(" --chmod={c}"));
        }
        for s in shown_paths.iter().chain(&shown_docs) {
            hist.push(' ');
            hist.push_str(s);
        }
        hist.push_str(&format!(" {raw_dest}"));
        let step = Step {
            name: format!("{label} {}", self.display(ins, &vars)),
            line: ins.line,
            op: Op::Copy(CopySpec {
                from,
                srcs,
                dest,
                chown,
                chmod,
                parents,
                excludes,
                link,
                unpack: is_add && unpack,
            }),
            parent: Some(st.node),
            no_cache: false,
        };
        st.node = self.add(step, &inputs);
        self.layer(st, format!("{hist} # buildkit"));
        Ok(())
    }
}
