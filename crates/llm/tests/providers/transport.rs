//! Failures below the wire format: timeouts, resets, bodies that are not what they claim, and a
//! key echoed back by the provider. Shown on the OpenAI route; every provider shares this layer.

use std::time::Duration;

use chorus_core::spec::Params;
use chorus_llm::ErrorKind;
use chorus_mock_llm::{Behaviour, Fault};
use tokio::time::Instant;

use super::{KEY, Setup, call, route};

fn quick(setup: &Setup, provider: &str) -> chorus_llm::Route {
    let mut config = setup.config(provider, "m");
    config.timeout = Duration::from_millis(300);
    route(config)
}

#[tokio::test]
async fn a_hang_is_a_timeout_after_the_routes_timeout() {
    let setup = Setup::new().await;
    setup.mock.script("m", Behaviour::always(Fault::Hang));
    for provider in ["openai", "anthropic", "ollama"] {
        let started = Instant::now();
        let error = call(&quick(&setup, provider), Params::default())
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(
            (error.kind, error.is_retryable()),
            (ErrorKind::Timeout, true),
            "{provider}"
        );
        assert_eq!(error.message, "no answer within 300ms");
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
            "{elapsed:?}"
        );
    }
}

#[tokio::test]
async fn slow_answers_arrive_within_the_timeout_and_time_out_beyond_it() {
    let setup = Setup::new().await;
    let route = quick(&setup, "openai");
    setup.mock.script(
        "m",
        Behaviour::default()
            .fail_next(
                1,
                Fault::Slow {
                    delay: Duration::from_millis(50),
                },
            )
            .fail_next(
                1,
                Fault::Slow {
                    delay: Duration::from_secs(2),
                },
            ),
    );
    assert!(call(&route, Params::default()).await.is_ok());
    let error = call(&route, Params::default()).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Timeout);
    setup.mock.script(
        "m",
        Behaviour::default().with_latency(Duration::from_secs(2)),
    );
    assert_eq!(
        call(&route, Params::default()).await.unwrap_err().kind,
        ErrorKind::Timeout
    );
}

#[tokio::test]
async fn a_reset_connection_is_a_connection_error() {
    let setup = Setup::new().await;
    setup
        .mock
        .script("m", Behaviour::default().fail_next(3, Fault::Reset));
    for provider in ["openai", "anthropic", "ollama"] {
        let error = call(&quick(&setup, provider), Params::default())
            .await
            .unwrap_err();
        assert_eq!(
            (error.kind, error.status, error.is_retryable()),
            (ErrorKind::Connection, None, true)
        );
        assert!(
            error
                .message
                .starts_with("connection failed before an answer: "),
            "{}",
            error.message
        );
    }
    assert_eq!(setup.mock.stats("m").outcomes["reset"], 3);
}

#[tokio::test]
async fn nobody_listening_is_a_connection_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let mut config = chorus_core::config::RouteConfig::new("r", "openai", "m");
    config.base_url = Some(url);
    let error = call(&route(config), Params::default()).await.unwrap_err();
    assert_eq!(
        (error.kind, error.is_retryable()),
        (ErrorKind::Connection, true)
    );
    assert!(
        error.message.starts_with("cannot connect: "),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn malformed_and_truncated_bodies_are_malformed() {
    let setup = Setup::new().await;
    setup.mock.script(
        "m",
        Behaviour::default()
            .fail_next(3, Fault::Malformed)
            .fail_next(3, Fault::Truncated),
    );
    for provider in ["openai", "anthropic", "ollama"] {
        let error = call(&quick(&setup, provider), Params::default())
            .await
            .unwrap_err();
        assert_eq!(
            (error.kind, error.is_retryable()),
            (ErrorKind::Malformed, true)
        );
        assert!(
            error.message.starts_with("response body is not "),
            "{}",
            error.message
        );
    }
    for provider in ["openai", "anthropic", "ollama"] {
        let error = call(&quick(&setup, provider), Params::default())
            .await
            .unwrap_err();
        assert_eq!(
            (error.kind, error.is_retryable()),
            (ErrorKind::Malformed, true)
        );
        assert!(
            error.message.starts_with("response body cut short: "),
            "{}",
            error.message
        );
    }
}

#[tokio::test]
async fn a_key_echoed_in_an_error_is_redacted() {
    let setup = Setup::new().await;
    let echo = Fault::Status {
        status: 401,
        retry_after: None,
        code: Some("invalid_api_key".into()),
        message: Some(format!("Incorrect API key provided: {KEY}.")),
    };
    setup
        .mock
        .script("m", Behaviour::default().fail_next(1, echo));
    let error = call(&quick(&setup, "openai"), Params::default())
        .await
        .unwrap_err();
    assert_eq!(error.message, "Incorrect API key provided: [redacted].");
    assert!(!format!("{error:?} {error}").contains(KEY));
}
