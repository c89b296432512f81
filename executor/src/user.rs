//! `USER` and `--chown` names, resolved against a rootfs's /etc/passwd and /etc/group.

use crate::{Error, Result};
use std::fs;

/// A resolved `USER`.
#[derive(Debug, PartialEq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// Resolves `user[:group]` (names or ids) against /etc/passwd and /etc/group of the
/// current root, as Docker does: a name must exist; a numeric id need not.
pub fn resolve_user(spec: &str) -> Result<User> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = fs::read_to_string("/etc/group").unwrap_or_default();
    resolve_user_in(spec, &passwd, &group)
}

pub(crate) fn resolve_user_in(spec: &str, passwd: &str, group: &str) -> Result<User> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 6 && (f[0] == u || f[2] == u));
    let (uid, mut gid, home, name) = match (&entry, u.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse().map_err(|_| Error::BadEntry {
                file: "/etc/passwd",
                name: u.to_string(),
            })?,
            f[3].parse().unwrap_or(0),
            f[5].to_string(),
            Some(f[0].to_string()),
        ),
        (None, Ok(id)) => (id, 0, "/".to_string(), None),
        (None, Err(_)) => return Err(Error::NoUser(u.to_string())),
    };
    if let Some(g) = g {
        gid = match group
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 3 && (f[0] == g || f[2] == g))
        {
            Some(f) => f[2].parse().map_err(|_| Error::BadEntry {
                file: "/etc/group",
                name: g.to_string(),
            })?,
            None => g.parse().map_err(|_| Error::NoGroup(g.to_string()))?,
        };
    }
    let groups = match (&name, g) {
        (Some(n), None) => group
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m == n))
            .filter_map(|f| f[2].parse().ok())
            .filter(|&x| x != gid)
            .collect(),
        _ => Vec::new(),
    };
    Ok(User {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nappgrp:x:1001:\nstaff:x:50:app\n";

    #[test]
    fn users_resolve_like_docker() {
        let u = resolve_user_in("app", PASSWD, GROUP).expect("app");
        assert_eq!(
            u,
            User {
                uid: 1000,
                gid: 1001,
                groups: vec![50],
                home: "/home/app".into()
            }
        );
        let u = resolve_user_in("1000:staff", PASSWD, GROUP).expect("ids");
        assert_eq!((u.uid, u.gid, u.groups.len()), (1000, 50, 0));
        let u = resolve_user_in("4242:4343", PASSWD, GROUP).expect("numeric");
        assert_eq!((u.uid, u.gid), (4242, 4343));
        assert_eq!(
            resolve_user_in("", PASSWD, GROUP).expect("root").home,
            "/root"
        );
        assert!(resolve_user_in("nobody-here", PASSWD, GROUP).is_err());
        assert!(resolve_user_in("app:nogroup", PASSWD, GROUP).is_err());
    }
}
