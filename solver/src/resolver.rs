//! The base image resolver the frontend asks while it compiles: once per name and
//! platform, each shown as a step; from the store's pin of the name when it has one
//! (as `docker build` uses a local image), through the registry with `--pull` or
//! when there is none; `oci-layout://` names from the local layout.

use kiln_frontend::{ImageConfig, ImageResolver, Platform, ResolvedImage};
use kiln_progress::Progress;
use kiln_registry::{Registry, Want};
use kiln_snapshotter::Store;
use std::collections::HashMap;
use std::sync::Mutex;

/// Resolves base images through the registry, once per name, showing each as a step.
pub struct Resolver<'a> {
    pub registry: &'a Registry,
    pub store: &'a Store,
    pub runtime: &'a tokio::runtime::Handle,
    pub progress: &'a Progress,
    /// `--pull`: ask the registry even for names the store has pinned.
    pub pull: bool,
    seen: Mutex<HashMap<String, ResolvedImage>>,
}

impl<'a> Resolver<'a> {
    pub fn new(
        registry: &'a Registry,
        store: &'a Store,
        runtime: &'a tokio::runtime::Handle,
        progress: &'a Progress,
        pull: bool,
    ) -> Resolver<'a> {
        Resolver {
            registry,
            store,
            runtime,
            progress,
            pull,
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl ImageResolver for Resolver<'_> {
    fn resolve(&self, name: &str, p: &Platform) -> std::result::Result<ResolvedImage, String> {
        let key = format!("{name} {p}");
        if let Some(r) = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(r.clone());
        }
        let shown = kiln_registry::parse_reference(name)
            .map(|r| r.whole())
            .unwrap_or_else(|_| name.to_string());
        let v = self.progress.vertex(&if *p == Platform::host() {
            format!("[internal] load metadata for {shown}")
        } else {
            format!("[{p} internal] load metadata for {shown}")
        });
        let want = Want {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone(),
        };
        let layout = kiln_registry::layout::parse(name);
        // A local OCI layout needs no pin: it is read again each build.
        let pinned = if self.pull || layout.is_some() {
            None
        } else {
            self.registry.pinned(name, &want, self.store)
        };
        if let Some(r) = &pinned {
            v.log(&format!(
                "{} as pinned in the store (--pull asks the registry again)",
                r.manifest_digest
            ));
        }
        let result = match pinned {
            Some(r) => Ok(r),
            None => match &layout {
                Some(l) => kiln_registry::layout::resolve(l, &want, self.store),
                None => self
                    .runtime
                    .block_on(self.registry.resolve(name, &want, self.store)),
            },
        }
        .map_err(|e| e.to_string())
        .and_then(|r| {
            if let Some(m) = &r.mirror {
                v.log(&format!("from mirror {m}"));
            }
            let config: ImageConfig = serde_json::from_slice(&r.config)
                .map_err(|e| format!("bad image config of {}: {e}", r.pinned))?;
            Ok(ResolvedImage {
                pinned: r.pinned,
                config,
            })
        });
        match &result {
            Ok(r) => {
                v.done();
                self.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, r.clone());
            }
            Err(e) => v.error(e),
        }
        result
    }
}
