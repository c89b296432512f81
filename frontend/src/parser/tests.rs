use super::*;

fn p(text: &str) -> Dockerfile {
    match parse(text, "Dockerfile") {
        Ok(d) => {
            // Every parsed file prints to text that parses back to the same thing.
            let printed = d.to_string();
            match parse(&printed, "Dockerfile") {
                Ok(again) => assert_eq!(again, d, "reparse of {printed:?}"),
                Err(e) => panic!("printed form {printed:?} does not parse: {e}"),
            }
            d
        }
        Err(e) => panic!("parse failed: {e}"),
    }
}

fn err(text: &str) -> String {
    match parse(text, "Dockerfile") {
        Ok(d) => panic!("expected an error, parsed {d:?}"),
        Err(e) => e.to_string(),
    }
}

fn text(i: &Instruction) -> &str {
    match &i.args {
        Args::Text(t) => t,
        Args::Exec(_) => panic!("exec form"),
    }
}

#[test]
fn keywords_are_case_insensitive_and_lines_are_counted() {
    let d = p("from busybox\n\n  run echo hi\n# comment\nCmd [\"sh\"]\n");
    let kinds: Vec<Kind> = d.instructions.iter().map(|i| i.kind).collect();
    assert_eq!(kinds, [Kind::From, Kind::Run, Kind::Cmd]);
    let lines: Vec<usize> = d.instructions.iter().map(|i| i.line).collect();
    assert_eq!(lines, [1, 3, 5]);
    assert_eq!(d.instructions[2].args, Args::Exec(vec!["sh".into()]));
}

#[test]
fn continuations_join_and_skip_comments_and_blank_lines() {
    let d = p("FROM a\nRUN echo a \\\n# inside\n    b \\\n\n  c\nRUN x\n");
    assert_eq!(text(&d.instructions[1]), "echo a     b   c");
    assert_eq!(d.instructions[1].line, 2);
    assert_eq!(d.instructions[1].end_line, 6);
    assert_eq!(d.instructions[2].line, 7);
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
}

#[test]
fn escaped_escape_is_not_a_continuation() {
    let d = p("FROM a\nRUN echo \\\\\nRUN b\n");
    assert_eq!(text(&d.instructions[1]), "echo \\\\");
    assert_eq!(d.instructions.len(), 3);
}

#[test]
fn directives() {
    let d = p("# syntax=docker/dockerfile:1\n# escape=`\nFROM a\nRUN echo `\n  b\n");
    assert_eq!(d.escape, '`');
    assert_eq!(
        d.directives.syntax.as_ref().map(|s| s.value.as_str()),
        Some("docker/dockerfile:1")
    );
    assert_eq!(text(&d.instructions[1]), "echo   b");
    // After a comment or an instruction, a directive is only a comment.
    let d = p("# hello\n# escape=`\nFROM a\nRUN echo \\\n b\n");
    assert_eq!(d.escape, '\\');
    let d = p("FROM a\n# escape=`\n");
    assert!(d.directives.escape.is_none());
    // A blank line ends the directives too.
    let d = p("\n# escape=`\nFROM a\n");
    assert_eq!(d.escape, '\\');
    let d = p("#check=skip=all;error=true\n#  SYNTAX = docker/dockerfile:1.7\nFROM a\n");
    assert!(d.directives.check.is_some() && d.directives.syntax.is_some());
    assert!(err("# escape=x\nFROM a\n").contains("invalid escape token"));
    assert!(err("# escape=\\\n# escape=`\nFROM a\n").contains("only one escape parser directive"));
}

#[test]
fn flags_are_split_from_arguments() {
    let d = p("FROM a\nRUN --mount=type=cache,target=/c --network=none echo hi\n");
    let r = &d.instructions[1];
    let names: Vec<(&str, Option<&str>)> = r
        .flags
        .iter()
        .map(|f| (f.name.as_str(), f.value.as_deref()))
        .collect();
    assert_eq!(
        names,
        [
            ("mount", Some("type=cache,target=/c")),
            ("network", Some("none"))
        ]
    );
    assert_eq!(text(r), "echo hi");
    let d = p("FROM a\nCOPY --link --chmod=\"0755\" a b\n");
    assert_eq!(d.instructions[1].flags[0].value, None);
    assert_eq!(d.instructions[1].flags[1].value.as_deref(), Some("0755"));
    // `--` ends the flags.
    let d = p("FROM a\nRUN -- --mount=x\n");
    assert_eq!(text(&d.instructions[1]), "--mount=x");
    assert!(d.instructions[1].flags.is_empty());
    let e = err("FROM a\nRUN --bogus echo\n");
    assert!(
        e.starts_with("Dockerfile:2:5: unknown flag: --bogus"),
        "{e}"
    );
    let e = err("FROM a\nENV --x=1 A=b\n");
    assert!(e.contains("ENV takes no flags"), "{e}");
}

#[test]
fn json_and_text_forms() {
    let cases: &[(&str, Args)] = &[
        (
            "CMD [\"a\", \"b c\"]",
            Args::Exec(vec!["a".into(), "b c".into()]),
        ),
        ("CMD [ \"a\" ]", Args::Exec(vec!["a".into()])),
        ("CMD [\"a\", 1]", Args::Text("[\"a\", 1]".into())),
        ("CMD ['a']", Args::Text("['a']".into())),
        (
            "CMD [\"unterminated\"",
            Args::Text("[\"unterminated\"".into()),
        ),
        ("ENTRYPOINT []", Args::Exec(vec![])),
        ("RUN echo [\"x\"]", Args::Text("echo [\"x\"]".into())),
        (
            "VOLUME [\"/a\", \"/b\"]",
            Args::Exec(vec!["/a".into(), "/b".into()]),
        ),
        ("VOLUME /a /b", Args::Text("/a /b".into())),
        (
            "SHELL [\"bash\", \"-c\"]",
            Args::Exec(vec!["bash".into(), "-c".into()]),
        ),
        ("ENV [\"a\"]", Args::Text("[\"a\"]".into())),
    ];
    for (line, want) in cases {
        let d = p(&format!("FROM a\n{line}\n"));
        assert_eq!(&d.instructions[1].args, want, "{line}");
    }
}

#[test]
fn argument_errors_name_the_line_and_what_was_expected() {
    let cases = [
        (
            "FROM a\nSHELL /bin/sh -c\n",
            "Dockerfile:2:7: SHELL requires the arguments to be in JSON form",
        ),
        (
            "FROM a\nCOPY onlyone\n",
            "Dockerfile:2:6: COPY requires at least two arguments",
        ),
        (
            "FROM a b\n",
            "Dockerfile:1:6: FROM requires either one or three arguments",
        ),
        ("FROM a AS\n", "FROM requires either one or three arguments"),
        (
            "FROM a x b\n",
            "FROM requires either one or three arguments",
        ),
        ("FROM a\nRUN\n", "RUN requires at least one argument"),
        ("FROM a\nENV\n", "ENV requires at least one argument"),
        (
            "FROM a\nWORKDIR\n",
            "WORKDIR requires at least one argument",
        ),
        (
            "FROM a\nFOO bar\n",
            "Dockerfile:2:1: unknown instruction: FOO",
        ),
        (
            "FROM a\nONBUILD ONBUILD RUN x\n",
            "Dockerfile:2:9: ONBUILD isn't allowed as an ONBUILD trigger",
        ),
        (
            "FROM a\nONBUILD FROM b\n",
            "FROM isn't allowed as an ONBUILD trigger",
        ),
        ("FROM a\nHEALTHCHECK\n", "HEALTHCHECK requires"),
        (
            "FROM a\nHEALTHCHECK CMD\n",
            "HEALTHCHECK requires CMD followed by a command",
        ),
        (
            "FROM a\nHEALTHCHECK NONE x\n",
            "HEALTHCHECK NONE takes no other arguments",
        ),
        (
            "FROM a\nHEALTHCHECK --bogus=1 NONE\n",
            "unknown flag: --bogus",
        ),
        (
            "FROM a\nRUN <<EOF\nno end\n",
            "Dockerfile:2:1: unterminated heredoc",
        ),
        ("", "file with no instructions"),
        ("# only a comment\n", "file with no instructions"),
    ];
    for (df, want) in cases {
        let e = err(df);
        assert!(e.contains(want), "{df:?}: got {e:?}, want {want:?}");
        // Every error shows the offending line and a caret.
        assert!(e.contains('^'), "{e}");
    }
}

#[test]
fn error_column_points_into_continuation_lines() {
    let e = err("FROM a\nRUN echo \\\n  --bogus \\\n  x\nCOPY \\\n   --nope=1 a b\n");
    assert!(e.starts_with("Dockerfile:6:4: unknown flag: --nope"), "{e}");
}

#[test]
fn heredocs_table() {
    struct Case {
        df: &'static str,
        names: &'static [&'static str],
        contents: &'static [&'static str],
        expand: &'static [bool],
    }
    let cases = [
        Case {
            df: "RUN <<EOF\necho hi\nEOF\n",
            names: &["EOF"],
            contents: &["echo hi\n"],
            expand: &[true],
        },
        Case {
            df: "RUN <<'EOF'\necho $x\nEOF\n",
            names: &["EOF"],
            contents: &["echo $x\n"],
            expand: &[false],
        },
        Case {
            df: "RUN <<\"EOF\"\necho\nEOF\n",
            names: &["EOF"],
            contents: &["echo\n"],
            expand: &[false],
        },
        Case {
            df: "RUN <<-EOF\n\techo hi\n\tEOF\n",
            names: &["EOF"],
            contents: &["\techo hi\n"],
            expand: &[true],
        },
        Case {
            df: "RUN python3 <<EOF\nprint(1)\nEOF\n",
            names: &["EOF"],
            contents: &["print(1)\n"],
            expand: &[true],
        },
        Case {
            df: "RUN cat <<A <<B > /out\na\nA\nb\nB\n",
            names: &["A", "B"],
            contents: &["a\n", "b\n"],
            expand: &[true, true],
        },
        Case {
            df: "RUN 3<<IN cat /dev/fd/3\nx\nIN\n",
            names: &["IN"],
            contents: &["x\n"],
            expand: &[true],
        },
        Case {
            df: "COPY <<one <<two /dest/\n1\none\n2\ntwo\n",
            names: &["one", "two"],
            contents: &["1\n", "2\n"],
            expand: &[true, true],
        },
        Case {
            df: "RUN <<EOF\n\nEOF\n",
            names: &["EOF"],
            contents: &["\n"],
            expand: &[true],
        },
        Case {
            df: "RUN <<EOF\nEOF\n",
            names: &["EOF"],
            contents: &[""],
            expand: &[true],
        },
        // Quoted or escaped, `<<` is no here-document.
        Case {
            df: "RUN echo '<<EOF'\n",
            names: &[],
            contents: &[],
            expand: &[],
        },
        Case {
            df: "RUN echo \"<<EOF\"\n",
            names: &[],
            contents: &[],
            expand: &[],
        },
        // The JSON form takes no here-documents.
        Case {
            df: "RUN [\"cat\", \"<<EOF\"]\n",
            names: &[],
            contents: &[],
            expand: &[],
        },
        // Nor do other instructions.
        Case {
            df: "CMD cat <<EOF\n",
            names: &[],
            contents: &[],
            expand: &[],
        },
        Case {
            df: "ONBUILD RUN <<EOF\nhi\nEOF\n",
            names: &["EOF"],
            contents: &["hi\n"],
            expand: &[true],
        },
    ];
    for c in cases {
        let d = p(&format!("FROM a\n{}", c.df));
        let i = &d.instructions[1];
        let docs = match &i.trigger {
            Some(t) => &t.heredocs,
            None => &i.heredocs,
        };
        let names: Vec<&str> = docs.iter().map(|h| h.name.as_str()).collect();
        let contents: Vec<&str> = docs.iter().map(|h| h.content.as_str()).collect();
        let expand: Vec<bool> = docs.iter().map(|h| h.expand).collect();
        assert_eq!(names, c.names, "{:?}", c.df);
        assert_eq!(contents, c.contents, "{:?}", c.df);
        assert_eq!(expand, c.expand, "{:?}", c.df);
        assert_eq!(d.instructions.len(), 2, "{:?}", c.df);
    }
}

#[test]
fn chomped_heredoc_text_loses_leading_tabs() {
    let d = p("FROM a\nCOPY <<-EOF /x\n\t\tone\n\ttwo\n\tEOF\n");
    assert_eq!(d.instructions[1].heredocs[0].text(), "one\ntwo\n");
}

#[test]
fn words_carry_offsets() {
    let d = p("FROM a\nCOPY  a   b  /c\n");
    let w = d.instructions[1].words();
    let got: Vec<(&str, usize)> = w.iter().map(|(s, o)| (s.as_str(), *o)).collect();
    assert_eq!(got, [("a", 13), ("b", 17), ("/c", 20)]);
}

#[test]
fn crlf_and_bom() {
    let d = p("\u{feff}FROM a\r\nRUN echo a \\\r\n b\r\n");
    assert_eq!(text(&d.instructions[1]), "echo a  b");
}

#[test]
fn onbuild_trigger() {
    let d = p("FROM a\nONBUILD COPY --chown=1 . /app\n");
    let t = d.instructions[1]
        .trigger
        .as_deref()
        .map(|t| (t.kind, t.flags.len()));
    assert_eq!(t, Some((Kind::Copy, 1)));
    assert_eq!(
        d.instructions[1].to_string(),
        "ONBUILD COPY --chown=1 . /app"
    );
}
