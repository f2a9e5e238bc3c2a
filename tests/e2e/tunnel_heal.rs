//! Healing, as users see it: a tunnel pair under a fault while users arrive every 100 ms.
//! Counts the user connections that failed and prints how long the tunnel took to carry
//! traffic again. The bound asserted is on lost users (none may be lost to a fault they
//! could outwait), not on time.

use std::time::{Duration, Instant};

use nodepass_testkit::fault::{Relay, Try, Users};
use nodepass_testkit::{free_port, wait_tunnel, Echo, Proc};

const UP: Duration = Duration::from_secs(20);

/// Which side of the pair is killed and started again.
#[derive(Clone, Copy, PartialEq)]
enum Restart {
    /// The client of a reverse pair (users at the server): the server keeps its user
    /// listener and takes the new client's handshake at once.
    Client,
    /// The server of a forward pair (users at the client): the client keeps its user
    /// listener and retries the handshake with a short backoff.
    Server,
}

/// Kills one side 1 s after users started arriving and starts it again 1 s later, with the
/// reference's default 3 s NP_SERVICE_COOLDOWN: the users who arrive meanwhile must wait and
/// go through, none refused.
fn restart_loses_no_user(side: Restart, pool_type: u8, tls: u8) {
    let case = match side {
        Restart::Client => format!("client restart, type={pool_type} tls={tls}"),
        Restart::Server => format!("server restart, type={pool_type} tls={tls}"),
    };
    let env = [("NP_SERVICE_COOLDOWN", "3s")];
    let echo = Echo::start();
    let (tunnel, uport) = (free_port(), free_port());
    let users_addr = format!("127.0.0.1:{uport}");
    // mode 1: the server listens for users and the client dials the echo; mode 2: the
    // other way round.
    let (server_url, client_url) = match side {
        Restart::Client => (
            format!("server://k@127.0.0.1:{tunnel}/{users_addr}?mode=1&type={pool_type}&tls={tls}"),
            format!("client://k@127.0.0.1:{tunnel}/{}?mode=2", echo.addr()),
        ),
        Restart::Server => (
            format!(
                "server://k@127.0.0.1:{tunnel}/{}?mode=2&type={pool_type}&tls={tls}",
                echo.addr()
            ),
            format!("client://k@127.0.0.1:{tunnel}/{users_addr}?mode=2"),
        ),
    };
    let mut server = Proc::worker("server", &server_url, &env);
    server.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let mut client = Proc::worker("client", &client_url, &env);
    wait_tunnel(&users_addr, UP, &[&server, &client]);

    let users = Users::start(users_addr);
    std::thread::sleep(Duration::from_secs(1));
    let (victim, name, url) = match side {
        Restart::Client => (&mut client, "client", &client_url),
        Restart::Server => (&mut server, "server", &server_url),
    };
    let killed = Instant::now();
    victim.kill();
    std::thread::sleep(Duration::from_secs(1));
    let restarted = Instant::now();
    *victim = Proc::worker(name, url, &env);
    std::thread::sleep(Duration::from_secs(6));
    let tries = users.finish();
    check(&case, &tries, killed, restarted, &server, &client);
}

/// Every user who arrived after the kill went through (users mid-transfer through the
/// killed process cannot be saved); prints the figures for the note.
fn check(case: &str, tries: &[Try], killed: Instant, restarted: Instant, a: &Proc, b: &Proc) {
    let after: Vec<&Try> = tries
        .iter()
        .filter(|t| t.start > killed + Duration::from_millis(20))
        .collect();
    let failed: Vec<&Try> = after.iter().copied().filter(|t| !t.ok).collect();
    let back = after
        .iter()
        .filter(|t| t.ok)
        .map(|t| t.end)
        .min()
        .map(|e| e.saturating_duration_since(restarted));
    eprintln!(
        "{case}: {} users after the kill, {} failed; first user through {:?} after the restart; longest wait {:?}",
        after.len(),
        failed.len(),
        back,
        after.iter().map(|t| t.end - t.start).max()
    );
    assert!(
        after.len() >= 40,
        "{case}: users kept arriving: {}",
        after.len()
    );
    assert!(
        failed.is_empty(),
        "{case}: {} of {} users who arrived after the kill failed:\n{failed:?}\n{}\n{}",
        failed.len(),
        after.len(),
        a.dump(),
        b.dump()
    );
}

#[test]
fn a_server_restart_loses_no_user_on_tcp() {
    restart_loses_no_user(Restart::Server, 0, 0);
}

#[test]
fn a_server_restart_loses_no_user_on_websocket_with_tls() {
    restart_loses_no_user(Restart::Server, 2, 1);
}

#[test]
fn a_server_restart_loses_no_user_on_http2() {
    restart_loses_no_user(Restart::Server, 3, 0);
}

/// Every connection between client and server goes silent (no FIN, no RST) while users
/// arrive at the server every 100 ms. The server stops taking users once the control
/// channel has been silent for 1.5 report intervals + 250 ms (1 s here; it looks at least
/// every 100 ms), so they wait in the backlog, and the session is rebuilt over fresh
/// connections after two intervals + 500 ms. Users who arrive 1.25 s after the cut must
/// all go through.
fn a_silent_link_is_rebuilt(pool_type: u8, tls: u8) {
    const GATED: Duration = Duration::from_millis(1250);
    let case = format!("silent link, type={pool_type} tls={tls}");
    let echo = Echo::start();
    let (tunnel, uport) = (free_port(), free_port());
    let server = Proc::worker(
        "server",
        &format!(
            "server://k@127.0.0.1:{tunnel}/127.0.0.1:{uport}?mode=1&type={pool_type}&tls={tls}&log=debug"
        ),
        &[],
    );
    server.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    let relay = Relay::start(tunnel);
    let client = Proc::worker(
        "client",
        &format!("client://k@127.0.0.1:{}/{}?mode=2", relay.port, echo.addr()),
        &[],
    );
    let users_addr = format!("127.0.0.1:{uport}");
    wait_tunnel(&users_addr, UP, &[&server, &client]);
    let users = Users::start(users_addr);
    std::thread::sleep(Duration::from_secs(1));
    relay.cut();
    // Taken after the cut: a user who started before this moment may have been mid-way.
    let cut = Instant::now();
    std::thread::sleep(Duration::from_secs(7));
    let tries = users.finish();
    let during: Vec<&Try> = tries
        .iter()
        .filter(|t| t.start > cut && t.start <= cut + GATED)
        .collect();
    let later: Vec<&Try> = tries.iter().filter(|t| t.start > cut + GATED).collect();
    let failed_later: Vec<&Try> = later.iter().copied().filter(|t| !t.ok).collect();
    let back = tries
        .iter()
        .filter(|t| t.ok && t.start > cut)
        .map(|t| t.end)
        .filter(|e| *e > cut + Duration::from_millis(200))
        .min()
        .map(|e| e - cut);
    eprintln!(
        "{case}: in the first 1.25 s of silence {} of {} users failed (the longest after {:?}); after it {} of {} failed; first user through {:?} after the cut; longest wait {:?}",
        during.iter().filter(|t| !t.ok).count(),
        during.len(),
        during.iter().filter(|t| !t.ok).map(|t| t.end - t.start).max(),
        failed_later.len(),
        later.len(),
        back,
        later.iter().map(|t| t.end - t.start).max()
    );
    assert!(
        later.len() >= 40,
        "{case}: users kept arriving: {}",
        later.len()
    );
    // Users handed entries of the dead link in the first moments are closed when the
    // session ends for the silence, not left hanging to their own 20 s timeout.
    let hung: Vec<&Try> = during
        .iter()
        .copied()
        .filter(|t| !t.ok && t.end - t.start > Duration::from_secs(10))
        .collect();
    assert!(
        hung.is_empty(),
        "{case}: users on the dead link hung instead of being closed: {hung:?}"
    );
    // A user is handed an entry only on a link heard from within a quarter interval (125 ms
    // here) or confirmed by a ping: only those who arrive in that moment after the cut can
    // still be lost (at most two, users coming every 100 ms; four allows for a loaded
    // machine bunching them). Before the confirmation: 11 of 13.
    let failed_during = during.iter().filter(|t| !t.ok).count();
    assert!(
        failed_during <= 4,
        "{case}: {failed_during} of {} users who arrived in the first 1.25 s of silence failed\n{}\n{}",
        during.len(),
        server.dump(),
        client.dump()
    );
    assert!(
        failed_later.is_empty(),
        "{case}: {} of {} users who arrived after the first 1.25 s of silence failed:\n{failed_later:?}\nserver:\n{}\nclient:\n{}",
        failed_later.len(),
        later.len(),
        server.dump(),
        client.dump()
    );
}

#[test]
fn a_silent_link_is_rebuilt_on_tcp() {
    a_silent_link_is_rebuilt(0, 0);
}

#[test]
fn a_silent_link_is_rebuilt_on_tcp_with_tls() {
    a_silent_link_is_rebuilt(0, 1);
}

#[test]
fn a_silent_link_is_rebuilt_on_websocket() {
    a_silent_link_is_rebuilt(2, 0);
}

#[test]
fn a_silent_link_is_rebuilt_on_http2_with_tls() {
    a_silent_link_is_rebuilt(3, 1);
}

#[test]
fn a_client_restart_loses_no_user_on_tcp() {
    restart_loses_no_user(Restart::Client, 0, 0);
}

#[test]
fn a_client_restart_loses_no_user_on_tcp_with_tls() {
    restart_loses_no_user(Restart::Client, 0, 1);
}

#[test]
fn a_client_restart_loses_no_user_on_websocket() {
    restart_loses_no_user(Restart::Client, 2, 0);
}

#[test]
fn a_client_restart_loses_no_user_on_http2() {
    restart_loses_no_user(Restart::Client, 3, 1);
}

// QUIC (type 1) is not here yet: a killed client sends no CONNECTION_CLOSE, so the server
// can hand a user a stream of the dead connection in the moment before it doubts the link
// (a quarter interval); 1 of 69 users failed in that window when last measured (10 of 69
// before each entry waited for a confirmed link). Issue 18 goes on.

/// Where the users of [`idle_entries_behind_a_middlebox`] connect and which program is the
/// client.
#[derive(Clone, Copy, PartialEq)]
enum UsersAt {
    /// At the server (reverse flow): the server refreshes; the client is ours.
    Server,
    /// At the server, with the Go reference as the client (it reads our `flush`).
    ServerGoClient,
    /// At the client (forward flow): the client refreshes.
    Client,
}

/// A middlebox between client and server that forgets connections idle for 3 s (a NAT, a
/// load balancer or proxy with an idle timeout; keep-alive probes end at it), while the
/// control channel lives on its pings. Users arrive every 100 ms for 12 s and take the
/// oldest idle entry, so without a refresh they are handed entries idle for longer than the
/// middlebox keeps them (a 64-entry pool at 10 users/s: 6.4 s) and their bytes vanish.
/// Returns (users, failed), or None when the Go binary is needed and absent.
fn idle_entries_behind_a_middlebox(
    pool_type: u8,
    tls: u8,
    refresh: &str,
    at: UsersAt,
) -> Option<(usize, usize)> {
    let go = match at {
        UsersAt::ServerGoClient => Some(nodepass_testkit::go::go_bin()?),
        _ => None,
    };
    let case = format!(
        "idle timeout 3 s, refresh {refresh}, type={pool_type} tls={tls}, {}",
        match at {
            UsersAt::Server => "users at the server",
            UsersAt::ServerGoClient => "users at the server, Go client",
            UsersAt::Client => "users at the client",
        }
    );
    let env = [("NP_POOL_REFRESH", refresh)];
    let echo = Echo::start();
    let (tunnel, uport) = (free_port(), free_port());
    let users_addr = format!("127.0.0.1:{uport}");
    let (server_target, client_target) = match at {
        UsersAt::Client => (echo.addr(), users_addr.clone()),
        _ => (users_addr.clone(), echo.addr()),
    };
    let mode = if at == UsersAt::Client { 2 } else { 1 };
    let server = Proc::worker(
        "server",
        &format!(
            "server://k@127.0.0.1:{tunnel}/{server_target}?mode={mode}&type={pool_type}&tls={tls}"
        ),
        &env,
    );
    server.wait_line("ready", UP, |l| l.contains("\"kind\":\"ready\""));
    // QUIC runs over UDP, which this relay does not carry: its pair meets directly, and
    // the test shows that the refresh itself loses no user there.
    let relay = (pool_type != 1).then(|| Relay::start_idle_timeout(tunnel, Duration::from_secs(3)));
    let via = relay.as_ref().map_or(tunnel, |r| r.port);
    let client_url = format!("client://k@127.0.0.1:{via}/{client_target}?mode=2");
    let client = match &go {
        Some(go) => Proc::start("go client", go, &[&client_url], &env),
        None => Proc::worker("client", &client_url, &env),
    };
    wait_tunnel(&users_addr, UP, &[&server, &client]);
    let users = Users::start(users_addr);
    std::thread::sleep(Duration::from_secs(12));
    let tries = users.finish();
    let failed: Vec<&Try> = tries.iter().filter(|t| !t.ok).collect();
    eprintln!(
        "{case}: {} of {} users failed; longest wait {:?}",
        failed.len(),
        tries.len(),
        tries.iter().map(|t| t.end - t.start).max()
    );
    assert!(
        tries.len() >= 80,
        "{case}: users kept arriving: {}",
        tries.len()
    );
    if refresh != "0" {
        assert!(
            failed.is_empty(),
            "{case}: {} of {} users failed:\n{failed:?}\n{}\n{}",
            failed.len(),
            tries.len(),
            server.dump(),
            client.dump()
        );
    }
    Some((tries.len(), failed.len()))
}

/// The fault is real: with the refresh off (the reference's behaviour), users are handed
/// entries the middlebox has forgotten and fail.
#[test]
fn without_the_refresh_idle_entries_behind_a_middlebox_lose_users() {
    let (users, failed) =
        idle_entries_behind_a_middlebox(0, 0, "0", UsersAt::Server).expect("ours only");
    assert!(
        failed * 4 >= users,
        "with no refresh most users should meet a forgotten entry: {failed} of {users} failed"
    );
}

#[test]
fn idle_entries_are_refreshed_before_a_middlebox_forgets_them_on_tcp() {
    idle_entries_behind_a_middlebox(0, 0, "2s", UsersAt::Server);
}

#[test]
fn idle_entries_are_refreshed_before_a_middlebox_forgets_them_on_tcp_with_tls() {
    idle_entries_behind_a_middlebox(0, 1, "2s", UsersAt::Server);
}

#[test]
fn idle_entries_are_refreshed_before_a_middlebox_forgets_them_on_websocket() {
    idle_entries_behind_a_middlebox(2, 0, "2s", UsersAt::Server);
}

#[test]
fn idle_entries_are_refreshed_by_the_client_when_users_are_at_the_client() {
    idle_entries_behind_a_middlebox(0, 1, "2s", UsersAt::Client);
}

/// The Go client understands our refresh: `flush` is a signal of the reference.
#[test]
fn idle_entries_are_refreshed_with_the_go_client() {
    idle_entries_behind_a_middlebox(0, 0, "2s", UsersAt::ServerGoClient);
}

/// HTTP/2 carries the control channel and every entry on one connection, which its pings
/// keep alive; the refresh still replaces the idle streams and loses no user doing so.
#[test]
fn idle_entries_are_refreshed_without_loss_on_http2() {
    idle_entries_behind_a_middlebox(3, 1, "2s", UsersAt::Server);
}

#[test]
fn idle_entries_are_refreshed_without_loss_on_quic() {
    idle_entries_behind_a_middlebox(1, 1, "2s", UsersAt::Server);
}
