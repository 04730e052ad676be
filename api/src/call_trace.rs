//! One span and one log line per CRI call, so a grep for a method or an image follows it, and
//! the call counted in the Prometheus metrics (by method and code, with its latency).

use std::future::Future;
use std::time::Instant;

use tonic::{Code, Response, Status};
use tracing::{Instrument, debug, field, info_span, warn};

/// Runs one CRI call inside a `cri` span carrying the method and, when there is one, the image.
/// Calls are logged at debug; failures at warn, except `Unimplemented`, which kubelet triggers
/// every second for calls this build does not have yet and which is not a fault.
pub async fn traced<T, F>(
    method: &'static str,
    image: Option<&str>,
    call: F,
) -> Result<Response<T>, Status>
where
    F: Future<Output = Result<T, Status>>,
{
    let span = info_span!("cri", method, image = field::Empty);
    if let Some(image) = image {
        span.record("image", image);
    }
    async move {
        let started = Instant::now();
        debug!("call");
        let result = call.await;
        let elapsed = started.elapsed().as_secs_f64();
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        crate::metrics::global().observe_request(method, code, elapsed);
        let elapsed_ms = elapsed * 1000.0;
        match &result {
            Ok(_) => debug!(elapsed_ms, "done"),
            Err(status) if status.code() == Code::Unimplemented => {
                debug!(elapsed_ms, "unimplemented")
            }
            Err(status) => warn!(
                elapsed_ms,
                code = ?status.code(),
                message = status.message(),
                "failed"
            ),
        }
        result.map(Response::new)
    }
    .instrument(span)
    .await
}
