//! `GET {base}/events`: the SSE stream. `retry: 3000`, one `initial` event per instance
//! (the `********` record first, so a dashboard always gets an event at once), then live
//! events until a `shutdown` frame or until the subscriber lags too far behind (see
//! [`crate::events`] for the drop policy).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{method_not_allowed, ApiError};
use crate::events::{EventHub, Frame};
use crate::model::EventKind;
use crate::state::Master;

/// Subscribe to instance events (Server-Sent Events).
#[utoipa::path(get, path = "/events", tag = "events",
    responses(
        (status = 200, description = "`text/event-stream`: `retry: 3000`, then `event: instance` frames whose data is an InstanceEvent (types initial, create, update, delete, log, shutdown)",
         content_type = "text/event-stream", body = crate::model::InstanceEvent),
        (status = 401, description = "Missing or invalid API key", body = crate::model::ErrorBody),
        (status = 405, description = "Method not allowed", body = crate::model::ErrorBody),
    ))]
pub async fn events(State(m): State<Arc<Master>>, method: Method, headers: HeaderMap) -> Response {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    // Subscribe before the snapshot so nothing between the two is missed (an event may
    // then arrive twice, which is harmless: events carry the whole instance).
    let rx = m.events.subscribe();
    // The guard checked the key before this subscription existed. A rotation in between
    // sent its `shutdown` to the streams of that moment, not to this one: check again now
    // that every later rotation will reach us (the key changes before its `shutdown`).
    let still_valid = headers
        .get("x-api-key")
        .is_some_and(|k| m.key_matches(k.as_bytes()));
    if !still_valid {
        return ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized: Invalid API key")
            .into_response();
    }
    // The snapshot goes out as one chunk: with a thousand instances, a chunk per event
    // cost the reader (a browser console) a parse and a wake-up each.
    let mut snapshot = b"retry: 3000\n\n".to_vec();
    for i in m.all_instances().iter() {
        snapshot.extend_from_slice(&EventHub::render(EventKind::Initial, Some(i), ""));
    }
    let head = [Bytes::from(snapshot)];
    let hub = m.events.clone();
    let live = futures::stream::unfold(Some(rx), move |rx| next_frame(rx, hub.clone()));
    let body = futures::stream::iter(head)
        .chain(live)
        .map(Ok::<Bytes, std::convert::Infallible>);
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    resp
}

async fn next_frame(
    state: Option<broadcast::Receiver<Frame>>,
    hub: EventHub,
) -> Option<(Bytes, Option<broadcast::Receiver<Frame>>)> {
    let mut rx = state?;
    match rx.recv().await {
        Ok(Frame { bytes, close: true }) => Some((bytes, None)),
        Ok(Frame {
            bytes,
            close: false,
        }) => Some((bytes, Some(rx))),
        // Too slow: disconnect; the client reconnects and gets a fresh snapshot.
        Err(RecvError::Lagged(n)) => {
            tracing::warn!("SSE subscriber fell {n} events behind; disconnecting it");
            hub.note_lagged(n);
            None
        }
        Err(RecvError::Closed) => None,
    }
}
