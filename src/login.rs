//! `kiln login` and `kiln logout`, as `docker login` / `docker logout`: the
//! credential is checked against the registry, then kept in docker's config format
//! (or handed to the file's credential helper).

use anyhow::{bail, Context, Result};
use kiln_registry::{auth, login_host, Registry};
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct LoginArgs {
    /// Username.
    #[arg(short = 'u', long)]
    username: Option<String>,
    /// Password (insecure on the command line; prefer --password-stdin).
    #[arg(short = 'p', long)]
    password: Option<String>,
    /// Take the password from stdin.
    #[arg(long = "password-stdin")]
    password_stdin: bool,
    /// The file to keep credentials in (default: $REGISTRY_AUTH_FILE, else
    /// $DOCKER_CONFIG/config.json or ~/.docker/config.json).
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// Registry (default: Docker Hub).
    server: Option<String>,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    /// The file credentials are kept in (as for login).
    #[arg(long)]
    authfile: Option<PathBuf>,
    /// Registry (default: Docker Hub).
    server: Option<String>,
}

fn auth_file(env: &auth::Env, given: Option<PathBuf>) -> Result<PathBuf> {
    given.or_else(|| env.write_path()).context(
        "cannot tell where to keep credentials: set --authfile, REGISTRY_AUTH_FILE or HOME",
    )
}

fn prompt(label: &str, hidden: bool) -> Result<String> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask on: give -u and --password-stdin")?;
    write!(tty, "{label}: ")?;
    tty.flush()?;
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let saved = if hidden { tcgetattr(&tty).ok() } else { None };
    if let Some(t) = &saved {
        let mut quiet = t.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&tty, SetArg::TCSANOW, &quiet)?;
    }
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    if let Some(t) = &saved {
        let _ = tcsetattr(&tty, SetArg::TCSANOW, t);
        let _ = writeln!(tty);
    }
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub fn login(a: LoginArgs) -> Result<()> {
    let registry = Registry::from_env()?;
    let env = registry.auth_env().clone();
    let host = login_host(a.server.as_deref().unwrap_or("docker.io"));
    let path = auth_file(&env, a.authfile)?;
    let username = match a.username {
        Some(u) => u,
        None if std::io::stdin().is_terminal() => prompt("Username", false)?,
        None => bail!("no username: give -u USERNAME"),
    };
    let password = match (a.password, a.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are mutually exclusive"),
        (Some(p), false) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p
        }
        (None, true) => {
            let mut s = String::new();
            std::io::stdin()
                .read_line(&mut s)
                .context("reading the password from stdin")?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) if std::io::stdin().is_terminal() => prompt("Password", true)?,
        (None, false) => bail!("no password: give --password-stdin (or -p)"),
    };
    if username.is_empty() || password.is_empty() {
        bail!("username and password must not be empty");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(registry.check_login(&host, &username, &password))?;
    let stored = auth::store(&env, &path, &host, &username, &password)?;
    println!("Login Succeeded (credentials kept in {stored})");
    Ok(())
}

pub fn logout(a: LogoutArgs) -> Result<()> {
    let env = auth::Env::from_process();
    let host = login_host(a.server.as_deref().unwrap_or("docker.io"));
    let path = auth_file(&env, a.authfile)?;
    if auth::erase(&env, &path, &host)? {
        println!("Removing login credentials for {host}");
    } else {
        println!("Not logged in to {host}");
    }
    Ok(())
}
