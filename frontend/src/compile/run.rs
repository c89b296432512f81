//! RUN: its flags and mounts, here-documents, and the step it adds.

use super::*;

impl Compiler<'_> {
    pub(super) fn run(
        &mut self,
        idx: usize,
        ins: &Instruction,
        text: &str,
        st: &mut StageResult,
        label: String,
    ) -> Result<()> {
        let vars = st.env.clone();
        let cwd = if st.config.config.working_dir.is_empty() {
            "/".to_string()
        } else {
            st.config.config.working_dir.clone()
        };
        let mut mounts = Vec::new();
        let mut network = Network::Default;
        let mut security = Security::Sandbox;
        let stage_label = self.progress_prefix(idx, &st.platform.clone());
        let mut inputs = vec![st.node];
        for f in &ins.flags {
            let raw = f.value.clone().unwrap_or_default();
            match f.name.as_str() {
                "mount" => {
                    let expand = |v: &str| lexer::expand_word(v, &vars, self.escape);
                    let mut spec = mounts::parse_mount(&raw, &expand)
                        .map_err(|e| self.err(f.at, format!("--mount={raw}: {e}")))?;
                    if !spec.target.is_empty() && !spec.target.starts_with('/') {
                        spec.target = crate::path::clean(&format!("{cwd}/{}", spec.target));
                    }
                    let from = match (spec.kind, spec.from.clone()) {
                        (MountKind::Bind, None) => Some(CopyFrom::Context),
                        (MountKind::Bind | MountKind::Cache, Some(v)) => {
                            let node = self.stage_or_image(&v, idx, f.at, &stage_label)?;
                            inputs.push(node);
                            Some(CopyFrom::Step(node))
                        }
                        _ => None,
                    };
                    mounts.push(RunMount { spec, from });
                }
                "network" => {
                    network = mounts::parse_network(&raw).map_err(|e| self.err(f.at, e))?;
                    if network == Network::Host && !self.opts.run.allow_network_host {
                        return Err(self.err(
                            f.at,
                            "RUN --network=host: network.host is not allowed (pass --allow network.host)",
                        ));
                    }
                }
                "security" => {
                    security = mounts::parse_security(&raw).map_err(|e| self.err(f.at, e))?
                }
                other => return Err(self.err(f.at, format!("RUN --{other} is not supported yet"))),
            }
        }
        // `--shm-size`: a tmpfs of that size at /dev/shm, as BuildKit's frontend adds.
        if let Some(size) = self.opts.run.shm_size {
            mounts.push(RunMount {
                spec: MountSpec {
                    target: "/dev/shm".into(),
                    size: Some(size),
                    ..MountSpec::empty(MountKind::Tmpfs)
                },
                from: None,
            });
        }
        let mut files = Vec::new();
        let mut display = self.display(ins, &vars);
        let shell = shell_of(&st.config);
        let argv = match (&ins.args, ins.heredocs.as_slice()) {
            (Args::Exec(v), _) => v.clone(),
            (Args::Text(_), []) => with_shell(&shell, text),
            (Args::Text(_), docs) => {
                let first = &docs[0];
                match parser::heredoc_opener(text) {
                    Some(_) if docs.len() == 1 => {
                        display.push_str(&format!(" ({})", summarize_heredoc(&first.content)));
                        let data = first.text();
                        if data.starts_with("#!") {
                            files.push(InlineFile {
                                name: first.name.clone(),
                                data,
                                mode: 0o755,
                            });
                            with_shell(&shell, &format!("/dev/pipes/{}", first.name))
                        } else {
                            with_shell(&shell, &data)
                        }
                    }
                    _ => {
                        let mut full = text.to_string();
                        for d in docs {
                            full.push('\n');
                            full.push_str(&d.content);
                            full.push_str(&d.name);
                        }
                        with_shell(&shell, &full)
                    }
                }
            }
        };
        // RUN sees the state env (image Env with ARG values) and proxy build args.
        let mut env_pairs = st.env.clone();
        for k in PROXY_ARGS {
            if env_pairs.iter().any(|(n, _)| n == k) {
                continue;
            }
            if let Some((_, v)) = self.opts.build_args.iter().rev().find(|(n, _)| n == k) {
                env_pairs.push((k.to_string(), v.clone()));
            }
        }
        // An ssh mount: SSH_AUTH_SOCK names the first one's socket unless set, as
        // BuildKit's LLB exec does.
        if let Some(m) = mounts.iter().find(|m| m.spec.kind == MountKind::Ssh) {
            if !env_pairs.iter().any(|(k, _)| k == "SSH_AUTH_SOCK") {
                env_pairs.push(("SSH_AUTH_SOCK".into(), m.spec.target.clone()));
            }
        }
        let env: Vec<String> = env_pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // History: `RUN |N K=V ... argv # buildkit`, each declared ARG with its current
        // value (an ENV of the same name wins), as BuildKit's runCommandString.
        let mut hist_args: Vec<(String, String)> = Vec::new();
        for (k, v) in &st.args {
            let val = st
                .env
                .get(k)
                .unwrap_or_else(|| v.clone().unwrap_or_default());
            match hist_args.iter_mut().find(|(n, _)| n == k) {
                Some(slot) => slot.1 = val,
                None => hist_args.push((k.clone(), val)),
            }
        }
        let mut parts: Vec<String> = Vec::new();
        if !hist_args.is_empty() {
            parts.push(format!("|{}", hist_args.len()));
            parts.extend(hist_args.iter().map(|(k, v)| format!("{k}={v}")));
        }
        parts.extend(argv.iter().cloned());
        let step = Step {
            name: format!("{label} {display}"),
            line: ins.line,
            op: Op::Run(RunSpec {
                platform: st.platform.clone(),
                argv,
                env,
                cwd,
                user: st.config.config.user.clone(),
                mounts,
                // `--network=default` (or none given) is the build's `--network`.
                network: match network {
                    Network::Default => self.opts.run.network,
                    n => n,
                },
                security,
                files,
                extra_hosts: self.opts.run.extra_hosts.clone(),
                ulimits: self.opts.run.ulimits.clone(),
            }),
            parent: Some(st.node),
            no_cache: false,
        };
        st.node = self.add(step, &inputs);
        self.layer(st, format!("RUN {} # buildkit", parts.join(" ")));
        Ok(())
    }

    /// The instruction as progress shows it: the original text, variables expanded.
    pub(super) fn display(&self, ins: &Instruction, vars: &[(String, String)]) -> String {
        let lex = Lex {
            escape: self.escape,
            raw_quotes: true,
            raw_escapes: true,
            skip_unset: true,
            skip_quotes: false,
        };
        let shown = lex
            .process(&ins.original, vars)
            .map(|r| r.0)
            .unwrap_or_else(|_| ins.original.clone());
        match shown.split_once(char::is_whitespace) {
            Some((kw, rest)) => format!("{} {rest}", kw.to_ascii_uppercase()),
            None => shown.to_ascii_uppercase(),
        }
    }
}
