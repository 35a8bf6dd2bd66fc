//! A slow environment: a mock PostgreSQL that answers every connection late (2.5 s, as on an
//! emulated CPU). With the fixed 2 s deadline the writer's connection fails before any fault;
//! once the first connection is timed, the drill's deadlines scale with it and the writer
//! connects. The round trip is measured, the deadline is what scales.

use std::time::{Duration, Instant};

use pgset_drill::Patience;
use pgset_drill::load::{self, Endpoint, STATEMENT_DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How late the mock answers a new connection.
const LATE: Duration = Duration::from_millis(2500);

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// One client: reads its startup message, waits [`LATE`], trusts it (AuthenticationOk), then
/// answers every simple query with `SELECT 1`'s completion.
async fn serve(mut s: TcpStream) -> std::io::Result<()> {
    let len = s.read_i32().await? as usize;
    let mut startup = vec![0; len - 4];
    s.read_exact(&mut startup).await?;
    tokio::time::sleep(LATE).await;
    let mut hello = message(b'R', &0i32.to_be_bytes());
    hello.extend(message(b'Z', b"I"));
    s.write_all(&hello).await?;
    loop {
        let tag = s.read_u8().await?;
        let len = s.read_i32().await? as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await?;
        match tag {
            b'Q' => {
                let mut reply = message(b'C', b"SELECT 1\0");
                reply.extend(message(b'Z', b"I"));
                s.write_all(&reply).await?;
            }
            b'X' => return Ok(()),
            _ => {}
        }
    }
}

async fn late_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_connect_scales_the_deadlines_instead_of_failing_before_the_fault() {
    let port = late_server().await;
    let fixed = Endpoint::new("127.0.0.1", port, "not-a-password");
    assert_eq!(fixed.deadline(), STATEMENT_DEADLINE);
    // As before: each attempt gives up after 2 s, so no connection is ever made.
    let e = fixed.connect().await.unwrap_err();
    assert!(e.contains("2 s"), "{e}");

    // The first connection, timed with a generous deadline, measures the environment.
    let round_trip = load::time_first_connect(&fixed, pgset_drill::patience::FIRST_CONNECT)
        .await
        .unwrap();
    assert!(round_trip >= LATE, "{round_trip:?}");
    let patience = Patience::default().measured(round_trip);
    assert!(patience.deadline(STATEMENT_DEADLINE) >= LATE * 5);
    // The writer's connection (the engine's `connect_within(10 s)`) now succeeds.
    let scaled = fixed.clone().with_patience(patience);
    let started = Instant::now();
    let c = scaled
        .connect_within(Duration::from_secs(10))
        .await
        .expect("the writer connects once the deadlines scale");
    assert!(
        started.elapsed() >= LATE,
        "the connection took what it took"
    );
    scaled.within(c.simple_query("SELECT 1")).await.unwrap();

    // The user's factor alone does it too.
    let patient = fixed.with_patience(Patience::new(2.0).unwrap());
    assert_eq!(patient.deadline(), Duration::from_secs(4));
    patient.connect().await.expect("4 s is enough for 2.5 s");
}
