//! The solver on the recording fake executor: scheduling, cache reuse and step
//! failures, without namespaces.

use crate::cache::{options, CacheStore, Caches, FileHashes, LocalCache};
use crate::transfer;
use crate::{solve, Error, Solver};
use kiln_executor::fake::{Call, Recording};
use kiln_frontend::{BuildOptions, ImageResolver, Platform, ResolvedImage};
use kiln_progress::{Mode, Progress};
use kiln_snapshotter::Store;
use std::sync::Arc;

struct NoImages;

impl ImageResolver for NoImages {
    fn resolve(&self, name: &str, _: &Platform) -> Result<ResolvedImage, String> {
        Err(format!("no registry in this test ({name})"))
    }
}

struct Bench {
    _dir: tempfile::TempDir,
    store: Store,
    context: std::path::PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).expect("store");
        let context = dir.path().join("ctx");
        std::fs::create_dir_all(&context).expect("mkdir");
        std::fs::write(context.join("a.txt"), b"one").expect("write");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        Bench {
            _dir: dir,
            store,
            context,
            runtime,
        }
    }

    /// Builds `dockerfile` on `exec`; the error, if any.
    fn build(&self, dockerfile: &str, exec: Arc<Recording>, no_cache: bool) -> Result<(), Error> {
        self.build_with(dockerfile, exec, no_cache, vec![], None)
    }

    /// Builds `dockerfile` on `exec` with `imports` behind the local cache, and
    /// exports the results to `export` (mode=max).
    fn build_with(
        &self,
        dockerfile: &str,
        exec: Arc<Recording>,
        no_cache: bool,
        imports: Vec<Box<dyn CacheStore>>,
        export: Option<&std::path::Path>,
    ) -> Result<(), Error> {
        let opts = BuildOptions {
            file_name: "Dockerfile".into(),
            build_args: vec![],
            target: None,
            platform: Platform::host(),
            show_platform: false,
            run: Default::default(),
            no_cache_stages: Vec::new(),
            contexts: Vec::new(),
        };
        let graph = kiln_frontend::compile(dockerfile, &opts, &NoImages).expect("compile");
        let solver = Solver {
            executor: exec,
            cache: Arc::new(Caches {
                local: LocalCache::new(self.store.clone(), true),
                imports,
            }),
            registry: Arc::new(kiln_registry::Registry::new()),
            runtime: self.runtime.handle().clone(),
            context: self.context.clone(),
            contexts: Default::default(),
            ssh: Default::default(),
            excludes: vec![],
            ignore: Default::default(),
            file_hashes: FileHashes::default(),
            no_cache,
            secrets: Default::default(),
            emulators: Default::default(),
            compression: Default::default(),
            progress: Progress::new(Mode::Quiet),
            spool: None,
        };
        let done = solve(&solver, &graph)?;
        if let Some(dir) = export {
            let to = options::cache_to(&format!("type=local,dest={},mode=max", dir.display()))?;
            let records = transfer::select(&graph, &done, &[graph.target], to.mode);
            transfer::export(&solver, &to, &records, &[])?;
        }
        Ok(())
    }

    fn fake(&self) -> Arc<Recording> {
        Arc::new(Recording::new(self.store.clone()))
    }
}

const TWO_STAGES: &str = "FROM scratch AS a\nCOPY a.txt /src\nRUN make a\n\
FROM scratch AS b\nRUN make b\n\
FROM scratch\nCOPY --from=a /a /a\nCOPY --from=b / /b\n";

#[test]
fn every_step_runs_once_in_an_order_its_inputs_allow() {
    let b = Bench::new();
    let exec = b.fake();
    b.build(TWO_STAGES, exec.clone(), false).expect("build");
    let steps = exec.steps();
    assert_eq!(steps.len(), 5, "{steps:?}");
    let at = |s: &str| steps.iter().position(|x| x == s).expect(s);
    assert!(at("copy /src") < at("run /bin/sh -c make a"));
    assert!(at("run /bin/sh -c make a") < at("copy /a"));
    assert!(
        at("run /bin/sh -c make a") < at("copy /b") || at("run /bin/sh -c make b") < at("copy /b")
    );
    // A step runs on its parent's snapshots: the RUN of stage a on the COPY's.
    let lowers_of = |what: &str| {
        exec.calls().into_iter().find_map(|c| match c {
            Call::Step { what: w, lowers } if w == what => Some(lowers),
            _ => None,
        })
    };
    assert_eq!(lowers_of("copy /src"), Some(vec![]));
    assert_eq!(lowers_of("run /bin/sh -c make a").map(|l| l.len()), Some(1));
}

#[test]
fn a_second_build_is_served_from_the_cache_unless_no_cache() {
    let b = Bench::new();
    b.build(TWO_STAGES, b.fake(), false).expect("first");
    let again = b.fake();
    b.build(TWO_STAGES, again.clone(), false).expect("second");
    assert_eq!(again.steps(), Vec::<String>::new(), "all cached");
    // A changed context file invalidates the COPY and what builds on it, only.
    std::fs::write(b.context.join("a.txt"), b"two").expect("write");
    let changed = b.fake();
    b.build(TWO_STAGES, changed.clone(), false).expect("third");
    let mut steps = changed.steps();
    steps.sort();
    // (The final COPY from b too: its parent is the COPY from a.)
    assert_eq!(
        steps,
        ["copy /a", "copy /b", "copy /src", "run /bin/sh -c make a"]
    );
    let fresh = b.fake();
    b.build(TWO_STAGES, fresh.clone(), true).expect("no-cache");
    assert_eq!(fresh.steps().len(), 5);
}

#[test]
fn a_failing_run_names_its_line_and_stops_what_depends_on_it() {
    let b = Bench::new();
    let exec = Arc::new(Recording::new(b.store.clone()).exit_with("/bin/sh -c make a", 3));
    let err = b.build(TWO_STAGES, exec.clone(), false).expect_err("fails");
    match &err {
        Error::RunFailed { line, code, .. } => assert_eq!((*line, *code), (3, 3)),
        other => panic!("unexpected {other}"),
    }
    assert!(
        !exec.steps().contains(&"copy /a".to_string()),
        "what needs the failed step does not run: {:?}",
        exec.steps()
    );
    // Nothing of the failed step is cached: the next build runs it again, but not the
    // COPY before it.
    let again = b.fake();
    b.build(TWO_STAGES, again.clone(), false).expect("second");
    assert!(again.steps().contains(&"run /bin/sh -c make a".to_string()));
    assert!(!again.steps().contains(&"copy /src".to_string()));
}

#[test]
fn the_local_cache_store_answers_only_with_usable_records() {
    let b = Bench::new();
    b.build(TWO_STAGES, b.fake(), false).expect("build");
    assert!(LocalCache::new(b.store.clone(), true)
        .load(&crate::cache::CacheKey::new("nothing", &[]))
        .is_none());
    // Records whose snapshots are gone are not served: everything runs again.
    std::fs::remove_dir_all(b.store.root().join("snapshots")).expect("rm");
    std::fs::create_dir(b.store.root().join("snapshots")).expect("mkdir");
    let again = b.fake();
    b.build(TWO_STAGES, again.clone(), false).expect("again");
    assert_eq!(again.steps().len(), 5, "{:?}", again.steps());
}

#[test]
fn an_exported_cache_serves_a_fresh_store_without_fetching_until_a_step_runs() {
    let (a, b) = (Bench::new(), Bench::new());
    let dir = a._dir.path().join("cache");
    a.build_with(TWO_STAGES, a.fake(), false, vec![], Some(&dir))
        .expect("export");
    let import = |bench: &Bench| {
        transfer::import(
            &[options::cache_from(&format!("type=local,src={}", dir.display())).expect("from")],
            &bench.store,
            &Arc::new(kiln_registry::Registry::new()),
            bench.runtime.handle(),
            true,
            &|_| {},
        )
    };
    // Store B is empty and its context another copy: every step is served, and not
    // one layer is fetched or unpacked.
    let fresh = b.fake();
    b.build_with(TWO_STAGES, fresh.clone(), false, import(&b), None)
        .expect("cached");
    assert_eq!(fresh.calls(), Vec::<Call>::new());
    // A step added at the end runs on its parent's layers, which come in then.
    let more = b.fake();
    b.build_with(
        &format!("{TWO_STAGES}RUN make c\n"),
        more.clone(),
        false,
        import(&b),
        None,
    )
    .expect("one more step");
    assert_eq!(more.steps(), ["run /bin/sh -c make c"]);
    let unpacked = more
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Unpack { .. }))
        .count();
    assert_eq!(unpacked, 2, "{:?}", more.calls());
    // A cache whose blobs are gone is a miss, not a failure.
    std::fs::remove_dir_all(dir.join("blobs")).expect("rm");
    let c = Bench::new();
    let missed = c.fake();
    c.build_with(TWO_STAGES, missed.clone(), false, import(&c), None)
        .expect("miss");
    assert_eq!(missed.steps().len(), 5);
}
