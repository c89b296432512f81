//! Identities in a single-id namespace: `setuid` and its kin, emulated per process.
//!
//! Only root exists in such a namespace, so the kernel refuses `setgroups` and any
//! switch to another id. apt drops to `_apt` before it downloads; `su`, `runuser`
//! and daemons' `--user` switch too. apt then checks that the switch took: it wants
//! `getuid()` to be `_apt`'s and `setuid(0)` to fail. So a filter that only answers
//! "success" is not enough. The supervisor ([`crate::owners`]) keeps the credentials
//! each process asked for (real, effective, saved and filesystem ids, and
//! supplementary groups), checks every change with the kernel's rules for an
//! unprivileged or privileged caller, and answers the `get*` calls from them.
//!
//! Processes really stay root of the namespace: files they create are root's, and
//! permission checks are root's. This is emulation, not confinement; the RUN is the
//! sandbox.
//!
//! A process is known by its thread group, since glibc applies a change to every
//! thread. A process seen for the first time inherits the credentials of its parent
//! (they survive fork and exec) or, failing that, has those the RUN started with:
//! root's, or its `USER`'s. Its start time tells a reused pid from the process that
//! had it.

use nix::errno::Errno;
use std::collections::HashMap;

/// One process's emulated credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Creds {
    pub uid: [u32; 4], // real, effective, saved, filesystem
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
}

impl Creds {
    fn root(groups: Vec<u32>) -> Creds {
        Creds {
            uid: [0; 4],
            gid: [0; 4],
            groups,
        }
    }

    fn privileged(&self) -> bool {
        self.uid[1] == 0
    }
}

/// `-1` in an id argument: leave that id as it is.
const KEEP: u32 = u32::MAX;

/// What the kernel reports of a process, for [`Ids::of`].
pub(crate) struct Status {
    pub tgid: u32,
    pub ppid: u32,
    pub started: u64,
    pub groups: Vec<u32>,
}

/// The credentials of every process seen, by thread group.
#[derive(Default)]
pub(crate) struct Ids {
    known: HashMap<u32, (u64, Creds)>,
    /// What a process with no known ancestor starts with (the RUN's USER); root when
    /// `None`.
    first: Option<Creds>,
}

/// An identity call, decoded.
pub(crate) enum Call {
    SetUid(u32),
    SetGid(u32),
    SetReUid(u32, u32),
    SetReGid(u32, u32),
    SetResUid(u32, u32, u32),
    SetResGid(u32, u32, u32),
    SetFsUid(u32),
    SetFsGid(u32),
    SetGroups(Vec<u32>),
    GetUid,
    GetEUid,
    GetGid,
    GetEGid,
}

impl Ids {
    /// Ids whose processes start as `uid:gid` with `groups` (a RUN's non-root USER).
    pub(crate) fn starting_as(uid: u32, gid: u32, groups: Vec<u32>) -> Ids {
        Ids {
            known: HashMap::new(),
            first: Some(Creds {
                uid: [uid; 4],
                gid: [gid; 4],
                groups,
            }),
        }
    }

    /// The credentials of the process `status` describes; `parent` gives a parent's
    /// status when it must be looked up.
    pub(crate) fn of(
        &mut self,
        status: &Status,
        parent: &dyn Fn(u32) -> Option<Status>,
    ) -> &mut Creds {
        let fresh = !matches!(self.known.get(&status.tgid), Some((t, _)) if *t == status.started);
        if fresh {
            let mut inherited = None;
            let mut p = status.ppid;
            // The nearest known ancestor (a parent that never made an identity call
            // was never seen; its own parent may have been).
            for _ in 0..64 {
                if p == 0 {
                    break;
                }
                let Some(ps) = parent(p) else { break };
                if let Some((t, c)) = self.known.get(&ps.tgid) {
                    if *t == ps.started {
                        inherited = Some(c.clone());
                        break;
                    }
                }
                p = ps.ppid;
            }
            // Every process of the RUN descends from its first one: with no known
            // ancestor, a process has what the first one started with.
            let creds = inherited
                .or_else(|| self.first.clone())
                .unwrap_or_else(|| Creds::root(status.groups.clone()));
            self.known.insert(status.tgid, (status.started, creds));
        }
        let first = self.first.clone();
        let slot = self.known.entry(status.tgid).or_insert_with(|| {
            let creds = first.unwrap_or_else(|| Creds::root(status.groups.clone()));
            (status.started, creds)
        });
        &mut slot.1
    }
}

/// Applies `call` to `c` as the kernel would; the call's return value.
pub(crate) fn apply(c: &mut Creds, call: Call) -> Result<i64, Errno> {
    let privileged = c.privileged();
    match call {
        Call::GetUid => Ok(i64::from(c.uid[0])),
        Call::GetEUid => Ok(i64::from(c.uid[1])),
        Call::GetGid => Ok(i64::from(c.gid[0])),
        Call::GetEGid => Ok(i64::from(c.gid[1])),
        Call::SetUid(u) => set_id(&mut c.uid, privileged, u),
        Call::SetGid(g) => set_id(&mut c.gid, privileged, g),
        Call::SetResUid(r, e, s) => set_res(&mut c.uid, privileged, [r, e, s]),
        Call::SetResGid(r, e, s) => set_res(&mut c.gid, privileged, [r, e, s]),
        Call::SetReUid(r, e) => set_re(&mut c.uid, privileged, r, e),
        Call::SetReGid(r, e) => set_re(&mut c.gid, privileged, r, e),
        Call::SetFsUid(u) => Ok(set_fs(&mut c.uid, privileged, u)),
        Call::SetFsGid(g) => Ok(set_fs(&mut c.gid, privileged, g)),
        Call::SetGroups(g) => {
            if !privileged {
                return Err(Errno::EPERM);
            }
            c.groups = g;
            Ok(0)
        }
    }
}

/// setuid(2)/setgid(2): all four ids when privileged, else the effective (and
/// filesystem) one to the real or saved id.
fn set_id(ids: &mut [u32; 4], privileged: bool, v: u32) -> Result<i64, Errno> {
    if v == KEEP {
        return Err(Errno::EINVAL);
    }
    if privileged {
        *ids = [v; 4];
    } else if v == ids[0] || v == ids[2] {
        ids[1] = v;
        ids[3] = v;
    } else {
        return Err(Errno::EPERM);
    }
    Ok(0)
}

/// setresuid(2): each given id must be one of the current three unless privileged.
fn set_res(ids: &mut [u32; 4], privileged: bool, new: [u32; 3]) -> Result<i64, Errno> {
    let current = [ids[0], ids[1], ids[2]];
    if !privileged && new.iter().any(|&v| v != KEEP && !current.contains(&v)) {
        return Err(Errno::EPERM);
    }
    for (slot, v) in new.into_iter().enumerate() {
        if v != KEEP {
            ids[slot] = v;
        }
    }
    ids[3] = ids[1];
    Ok(0)
}

/// setreuid(2): the saved id follows the effective one when the real id is set, or
/// the effective one is set to other than the old real id.
fn set_re(ids: &mut [u32; 4], privileged: bool, r: u32, e: u32) -> Result<i64, Errno> {
    let old = *ids;
    if !privileged {
        if r != KEEP && r != old[0] && r != old[1] {
            return Err(Errno::EPERM);
        }
        if e != KEEP && e != old[0] && e != old[1] && e != old[2] {
            return Err(Errno::EPERM);
        }
    }
    if r != KEEP {
        ids[0] = r;
    }
    if e != KEEP {
        ids[1] = e;
    }
    if r != KEEP || (e != KEEP && e != old[0]) {
        ids[2] = ids[1];
    }
    ids[3] = ids[1];
    Ok(0)
}

/// setfsuid(2): returns the old filesystem id, whether or not it changed.
fn set_fs(ids: &mut [u32; 4], privileged: bool, v: u32) -> i64 {
    let old = ids[3];
    if v != KEEP && (privileged || ids.contains(&v)) {
        ids[3] = v;
    }
    i64::from(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// apt's DropPrivileges, step by step, with the checks it makes.
    #[test]
    fn apt_drops_to_its_sandbox_user_and_cannot_come_back() {
        let mut c = Creds::root(vec![0]);
        let apt = 42;
        assert_eq!(apply(&mut c, Call::SetGroups(vec![65534])), Ok(0));
        assert_eq!(apply(&mut c, Call::SetResGid(65534, 65534, 65534)), Ok(0));
        assert_eq!(apply(&mut c, Call::SetResUid(apt, apt, apt)), Ok(0));
        assert_eq!(apply(&mut c, Call::GetUid), Ok(42));
        assert_eq!(apply(&mut c, Call::GetEUid), Ok(42));
        assert_eq!(apply(&mut c, Call::GetGid), Ok(65534));
        assert_eq!(c.groups, vec![65534]);
        assert_eq!(apply(&mut c, Call::SetUid(0)), Err(Errno::EPERM));
        assert_eq!(
            apply(&mut c, Call::SetResUid(KEEP, 0, KEEP)),
            Err(Errno::EPERM)
        );
        assert_eq!(apply(&mut c, Call::SetGroups(vec![0])), Err(Errno::EPERM));
    }

    #[test]
    fn saved_ids_let_an_unprivileged_process_switch_back() {
        let mut c = Creds::root(vec![]);
        // seteuid(1000) (glibc: setresuid(-1, 1000, -1)): the saved id stays root.
        assert_eq!(apply(&mut c, Call::SetResUid(KEEP, 1000, KEEP)), Ok(0));
        assert_eq!(c.uid, [0, 1000, 0, 1000]);
        assert_eq!(apply(&mut c, Call::SetResUid(KEEP, 0, KEEP)), Ok(0));
        assert_eq!(c.uid, [0, 0, 0, 0]);
        // setreuid(1000, 1000): the saved id follows.
        assert_eq!(apply(&mut c, Call::SetReUid(1000, 1000)), Ok(0));
        assert_eq!(c.uid, [1000, 1000, 1000, 1000]);
        assert_eq!(apply(&mut c, Call::SetReUid(0, KEEP)), Err(Errno::EPERM));
        assert_eq!(apply(&mut c, Call::SetFsUid(0)), Ok(1000));
        assert_eq!(c.uid[3], 1000, "refused, silently");
        assert_eq!(apply(&mut c, Call::SetUid(KEEP)), Err(Errno::EINVAL));
    }

    #[test]
    fn a_process_inherits_its_nearest_known_ancestor_and_pids_are_not_confused() {
        let st = |tgid, ppid, started| Status {
            tgid,
            ppid,
            started,
            groups: vec![],
        };
        let mut ids = Ids::default();
        let table = |p: u32| match p {
            10 => Some(st(10, 1, 100)),
            11 => Some(st(11, 10, 101)),
            _ => None,
        };
        apply(ids.of(&st(10, 1, 100), &table), Call::SetUid(33)).expect("setuid");
        // 12's parent 11 made no call: 10's credentials reach it.
        assert_eq!(ids.of(&st(12, 11, 102), &table).uid, [33; 4]);
        // A new process that got pid 10 again starts from its own parent.
        assert_eq!(ids.of(&st(10, 1, 200), &table).uid, [0; 4]);
    }
}
