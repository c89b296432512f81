#!/usr/bin/env python3
"""Extracts the Dockerfile check (lint) cases of BuildKit's own test suite,
frontend/dockerfile/dockerfile_check_test.go, into JSON for kiln's tests:

    git -C BUILDKIT show HEAD:frontend/dockerfile/dockerfile_check_test.go \
      | python3 scripts/extract_check_cases.py > frontend/tests/fixtures/buildkit_check_cases.json

Each case is a Dockerfile (and .dockerignore), the frontend attributes, and the
warnings BuildKit must report (rule, detail, line, level), in the stream of a build
and in `--call check`'s result. Cases whose inputs Go computes (fmt.Sprintf, OS
switches, registries the test starts) are listed with the reason they are skipped.
"""
import json
import re
import sys

src = sys.stdin.read()


def go_string(s, i):
    """The Go string literal at s[i] (backquoted or double-quoted) and the index after
    it; a rune literal or a // comment is skipped the same way (its text is unused)."""
    if s.startswith('//', i):
        j = s.find('\n', i)
        return '', len(s) if j < 0 else j
    if s[i] == "'":
        j = i + 1
        while s[j] != "'":
            j += 2 if s[j] == '\\' else 1
        return '', j + 1
    if s[i] == '`':
        j = s.index('`', i + 1)
        return s[i + 1:j], j + 1
    if s[i] == '"':
        j = i + 1
        out = []
        while s[j] != '"':
            if s[j] == '\\':
                nxt = s[j + 1]
                out.append({'n': '\n', 't': '\t', '"': '"', '\\': '\\'}.get(nxt, '\\' + nxt))
                j += 2
            else:
                out.append(s[j])
                j += 1
        return ''.join(out), j + 1
    raise ValueError(f"not a string literal: {s[i:i+30]!r}")


def opens_literal(s, i):
    """Whether a string, a rune literal or a // comment starts at s[i]."""
    return s[i] in '`"\'' or s.startswith('//', i)


def block(s, i):
    """The text of the brace block starting at s[i] == '{', skipping strings."""
    depth = 0
    j = i
    while True:
        c = s[j]
        if opens_literal(s, j):
            _, j = go_string(s, j)
            continue
        if c == '{':
            depth += 1
        elif c == '}':
            depth -= 1
            if depth == 0:
                return s[i:j + 1], j + 1
        j += 1


def scan(s, i, stops, end):
    """The index of the first of `stops` at bracket depth 0 from s[i] (or of a closing
    bracket that leaves the starting depth), skipping literals; `end` if none."""
    depth = 0
    while i < end:
        c = s[i]
        if opens_literal(s, i):
            _, i = go_string(s, i)
            continue
        if c in '({[':
            depth += 1
        elif c in ')}]':
            depth -= 1
            if depth < 0:
                return i
        elif c in stops and depth == 0:
            return i
        i += 1
    return end


def split_args(s):
    """Top-level comma-separated arguments of a call's argument text."""
    out, depth, cur, i = [], 0, [], 0
    while i < len(s):
        c = s[i]
        if opens_literal(s, i):
            _, j = go_string(s, i)
            cur.append(s[i:j])
            i = j
            continue
        if c in '({[':
            depth += 1
        elif c in ')}]':
            depth -= 1
        if c == ',' and depth == 0:
            out.append(''.join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    if ''.join(cur).strip():
        out.append(''.join(cur).strip())
    return out


def string_expr(expr, strings):
    """A Go string expression the tests use: a literal, a known string variable,
    integration.UnixOrWindows(unix, windows) (the unix side), fmt.Sprintf/Appendf
    with %s and %d verbs, or []byte(...) of one of those. None otherwise."""
    expr = expr.strip()
    if not expr:
        return None
    if expr[0] in '`"':
        text, end = go_string(expr, 0)
        return text if end == len(expr) else None
    if re.fullmatch(r'\w+', expr):
        return strings.get(expr)
    m = re.match(r'(\[\]byte|integration\.UnixOrWindows|fmt\.Sprintf|fmt\.Appendf)\((.*)\)$', expr, re.S)
    if not m:
        return None
    args = split_args(m.group(2))
    if m.group(1) == '[]byte':
        return string_expr(args[0], strings) if len(args) == 1 else None
    if m.group(1) == 'integration.UnixOrWindows':
        return string_expr(args[0], strings)
    if m.group(1) == 'fmt.Appendf':
        args = args[1:]
    fmt_ = string_expr(args[0], strings)
    vals = [string_expr(a, strings) for a in args[1:]]
    if fmt_ is None or any(v is None for v in vals):
        return None
    verbs = re.findall(r'%[sdv]', fmt_)
    if len(verbs) != len(vals) or '%%' in fmt_:
        return None
    out = fmt_
    for v in vals:
        out = re.sub(r'%[sdv]', lambda _: v, out, count=1)
    return out


def byte_literal(expr):
    m = re.match(r'\s*\[\]byte\(', expr)
    if not m:
        return None
    text, _ = go_string(expr, m.end())
    return text


def fields(body):
    """key: value pairs at the top level of a composite literal body."""
    out = {}
    i = 1
    while i < len(body) - 1:
        m = re.compile(r'\s*([A-Za-z]+):\s*').match(body, i)
        if not m:
            i += 1
            continue
        key = m.group(1)
        j = m.end()
        # The value runs to the next top-level comma.
        k = scan(body, j, ',', len(body) - 1)
        out[key] = body[j:k].strip()
        i = k + 1
    return out


def warnings(expr, strings, helpers):
    out = []
    m = re.match(r'\[\]expectedLintWarning\{', expr)
    if not m:
        raise ValueError(f"warnings: {expr[:40]!r}")
    inner = expr[m.end() - 1:]
    outer, _ = block(inner, 0)
    for elem in split_args(outer[1:-1]):
        if not elem:
            continue
        call = re.match(r'(\w+)\((.*)\)$', elem, re.S)
        if call and call.group(1) in helpers:
            # A local helper `func(p1 string, p2 int) expectedLintWarning { return {...} }`.
            params, lit = helpers[call.group(1)]
            args = split_args(call.group(2))
            scope = dict(strings)
            for (pname, ptype), a in zip(params, args):
                scope[pname] = a.strip() if ptype == 'int' else string_expr(a, strings)
            f = {k: (scope.get(v, v) if re.fullmatch(r'\w+', v) else v) for k, v in fields(lit).items()}
            strings_for = scope
        elif elem.startswith('{'):
            f = fields(elem)
            strings_for = strings
        else:
            raise ValueError(f"warning element {elem[:40]!r}")
        w = {}
        for key, val in f.items():
            if key in ('Line', 'Level'):
                w[key.lower()] = int(val)
            elif key in ('RuleName', 'Detail', 'Description', 'URL'):
                text = string_expr(val, strings_for)
                if text is None:
                    raise ValueError(f"{key} is computed: {val[:40]!r}")
                w[{'RuleName': 'rule'}.get(key, key.lower())] = text
        out.append(w)
    return out


STATEMENT = re.compile(r'\b(\w+)\s*:?=\s*|checkLinterWarnings\(t, sb, &lintTestParams(\{)')


def statements(body):
    """Assignments and checkLinterWarnings calls of a function body, in order, never
    inside a string or a comment."""
    i = 0
    while i < len(body):
        if opens_literal(body, i):
            _, i = go_string(body, i)
            continue
        m = STATEMENT.match(body, i) if (i == 0 or not (body[i - 1].isalnum() or body[i - 1] == '_')) else None
        if m:
            yield m
            if m.group(2):
                # The call's literal is parsed by the caller: skip it here.
                _, i = block(body, m.start(2))
            else:
                i = m.end()
            continue
        i += 1


cases, skipped = [], []
names = re.search(r'var lintTests = integration\.TestFuncs\((.*?)\)', src, re.S).group(1)
for name in re.findall(r'\w+', names):
    m = re.search(r'func ' + name + r'\(t \*testing\.T, sb integration\.Sandbox\) \{', src)
    body, _ = block(src, m.end() - 1)
    variables = {}
    helpers = {}
    for hm in re.finditer(r'(\w+) := func\(([^)]*)\) expectedLintWarning \{\s*return expectedLintWarning(\{)', body):
        params = []
        for p_ in hm.group(2).split(','):
            parts = p_.split()
            params.append(parts)
        # `a, b string` style groups: give each name the group's type.
        typed = []
        pending = []
        for parts in params:
            if len(parts) == 1:
                pending.append(parts[0])
            else:
                for nm in pending:
                    typed.append((nm, parts[1]))
                pending = []
                typed.append((parts[0], parts[1]))
        helpers[hm.group(1)] = (typed, block(body, hm.start(3))[0])
    n = 0
    for st in statements(body):
        if st.group(1):
            # Any assignment: to the end of its statement (a line with balanced
            # brackets); what string_expr can evaluate is known, the rest is not.
            j = scan(body, st.end(), '\n', len(body))
            try:
                variables[st.group(1)] = string_expr(body[st.end():j], variables)
            except (ValueError, IndexError):
                variables[st.group(1)] = None
            continue
        n += 1
        case_name = f"{name}#{n}"
        lit, _ = block(body, st.start(2))
        f = fields(lit)
        try:
            case = {"name": case_name}
            for key, var in (("Dockerfile", "dockerfile"), ("DockerIgnore", "dockerignore")):
                if key not in f:
                    continue
                v = f[key]
                text = string_expr(v, variables)
                if text is None:
                    raise ValueError(f"{key} is computed ({v[:40]})")
                case[var] = text
            if "dockerfile" not in case:
                raise ValueError("no Dockerfile")
            case["warnings"] = warnings(f["Warnings"], variables, helpers) if "Warnings" in f else []
            if "UnmarshalWarnings" in f:
                case["unmarshal_warnings"] = warnings(f["UnmarshalWarnings"], variables, helpers)
            if "BuildErr" in f:
                case["build_err"] = go_string(f["BuildErr"], 0)[0]
            for key in ("StreamBuildErrRegexp", "UnmarshalBuildErrRegexp"):
                if key in f:
                    mm = re.match(r'regexp\.MustCompile\((.*)\)$', f[key], re.S)
                    if not mm:
                        raise ValueError(f"{key} is computed")
                    case[re.sub(r'(?<!^)(?=[A-Z])', '_', key).lower()] = go_string(mm.group(1), 0)[0]
            if "BuildErrLocation" in f:
                case["build_err_line"] = int(f["BuildErrLocation"])
            if "FrontendAttrs" in f:
                attrs = {}
                for k, v in re.findall(r'("(?:[^"\\]|\\.)*")\s*:\s*("(?:[^"\\]|\\.)*")', f["FrontendAttrs"]):
                    attrs[go_string(k, 0)[0]] = go_string(v, 0)[0]
                if not attrs and f["FrontendAttrs"].strip() not in ("map[string]string{}",):
                    raise ValueError("FrontendAttrs is computed")
                case["attrs"] = attrs
            unknown = set(f) - {"Dockerfile", "DockerIgnore", "Warnings", "UnmarshalWarnings", "BuildErr",
                                "StreamBuildErrRegexp", "UnmarshalBuildErrRegexp", "BuildErrLocation",
                                "FrontendAttrs"}
            if unknown:
                raise ValueError(f"uses {sorted(unknown)}")
            cases.append(case)
        except (ValueError, KeyError, IndexError) as e:
            skipped.append({"name": case_name, "why": str(e)})

json.dump({
    "source": "github.com/moby/buildkit frontend/dockerfile/dockerfile_check_test.go (Apache-2.0)",
    "cases": cases,
    "skipped": skipped,
}, sys.stdout, indent=1)
print()
