//! Properties of the Dockerfile parser over generated input: it never panics, and
//! whatever it accepts prints back to text that parses to the same instructions.

use kiln_frontend::parser::parse;
use proptest::prelude::*;

/// Lines built from Dockerfile-ish pieces, so that generated files reach deep into the
/// parser (flags, JSON, continuations, here-documents, directives) and not only its
/// "unknown instruction" error.
fn dockerfile_line() -> impl Strategy<Value = String> {
    let keyword = prop::sample::select(vec![
        "FROM",
        "RUN",
        "CMD",
        "COPY",
        "ADD",
        "ENV",
        "ARG",
        "LABEL",
        "EXPOSE",
        "WORKDIR",
        "USER",
        "VOLUME",
        "SHELL",
        "ENTRYPOINT",
        "ONBUILD",
        "HEALTHCHECK",
        "STOPSIGNAL",
        "MAINTAINER",
        "run",
        "From",
        "# syntax=docker/dockerfile:1",
        "# escape=`",
        "#",
        "",
        "  ",
    ]);
    let piece = prop::sample::select(vec![
        " ",
        "\t",
        "--mount=type=cache,target=/c",
        "--from=a",
        "--chmod=755",
        "--link",
        "--network=none",
        "--",
        "\"",
        "'",
        "\\",
        "`",
        "[\"a\", \"b\"]",
        "[",
        "]",
        "<<EOF",
        "<<-EOF",
        "<<'EOF'",
        "EOF",
        "\tEOF",
        "$A",
        "${A:-b}",
        "=",
        "a=b",
        "x",
        "AS",
        "CMD",
        "NONE",
        "/dst/",
        ".",
        "é",
        "\r",
    ]);
    (keyword, prop::collection::vec(piece, 0..8))
        .prop_map(|(k, parts)| format!("{k} {}", parts.concat()))
}

/// Mostly well-formed instructions with here-document bodies, so that the reparse
/// property sees many accepted files.
fn good_line() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "RUN echo hi",
        "RUN <<EOF\necho a\nEOF",
        "RUN <<-EOF\n\techo a\n\tEOF",
        "RUN cat <<A <<'B' > /x\na $X\nA\nb\nB",
        "COPY <<EOF /dst\nx\nEOF",
        "COPY --from=a --chmod=644 x y /d/",
        "ADD [\"a b\", \"/c\"]",
        "ENV A=1 B=\"2 3\"",
        "ENV A 1 2",
        "LABEL \"k\"=v",
        "RUN --mount=type=cache,target=/c --network=none make \\\n  # comment\n\n  all",
        "RUN -- --weird",
        "CMD [\"a\"]",
        "CMD echo \"$X\"",
        "ENTRYPOINT []",
        "SHELL [\"/bin/bash\", \"-c\"]",
        "HEALTHCHECK --interval=5s CMD true",
        "HEALTHCHECK NONE",
        "ONBUILD RUN <<EOF\nx\nEOF",
        "ONBUILD COPY . /app",
        "EXPOSE 80/udp",
        "WORKDIR /a",
        "USER 1:2",
        "VOLUME /a /b",
        "STOPSIGNAL 9",
        "ARG A=\"x y\" B",
        "MAINTAINER me",
        "# a comment",
        "",
    ])
    .prop_map(str::to_string)
}

fn dockerfile() -> impl Strategy<Value = String> {
    let line = prop_oneof![3 => good_line(), 1 => dockerfile_line()];
    prop::collection::vec(line, 0..12).prop_map(|lines| format!("FROM a\n{}", lines.join("\n")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_text(s in "\\PC*") {
        let _ = parse(&s, "Dockerfile");
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..512)) {
        let s = String::from_utf8_lossy(&b);
        let _ = parse(&s, "Dockerfile");
    }

    #[test]
    fn errors_always_carry_a_position(s in dockerfile()) {
        if let Err(e) = parse(&s, "Dockerfile") {
            let m = e.to_string();
            prop_assert!(m.starts_with("Dockerfile:"), "{m}");
        }
    }

    #[test]
    fn printed_ast_reparses_to_itself(s in dockerfile()) {
        if let Ok(d) = parse(&s, "Dockerfile") {
            let printed = d.to_string();
            let again = parse(&printed, "Dockerfile");
            prop_assert!(again.is_ok(), "printed form does not parse: {printed:?} from {s:?}: {:?}", again.err().map(|e| e.to_string()));
            prop_assert_eq!(again.ok(), Some(d), "printed: {:?} from {:?}", printed, s);
        }
    }
}
