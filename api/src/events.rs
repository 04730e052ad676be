//! Container events for `GetContainerEvents` (kubelet's Evented PLEG): CONTAINER_CREATED,
//! STARTED, STOPPED and DELETED, each with the pod's sandbox status and the statuses of the
//! pod's containers, to every subscriber.
//!
//! Emitting never blocks and never takes a lock of the container code: the container code
//! (blocking threads, the exit watchers, sometimes with a record lock held) only pushes the
//! bare fact into a bounded queue. One publisher thread turns facts into full events, which
//! needs the sandbox and container locks, and hands them to a broadcast channel, in emission
//! order. A subscriber that falls behind skips what it missed instead of slowing anyone.

use std::pin::Pin;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use k8s_cri::v1 as cri;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, warn};

use crate::reservation::lock;

/// How many facts may wait for the publisher before new ones are dropped (with a warning).
pub const QUEUE_DEPTH: usize = 4096;
/// How many events a subscriber may fall behind before it skips ahead.
pub const SUBSCRIBER_BACKLOG: usize = 1024;

/// What the container code reports: which container, which pod, what happened, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerFact {
    pub container_id: String,
    pub sandbox_id: String,
    pub kind: cri::ContainerEventType,
    /// Nanoseconds since the epoch.
    pub at: i64,
}

/// Turns a fact into the event subscribers get (the statuses of the pod and its containers
/// as they are now); `None` drops it.
pub type EventBuilder = Box<dyn Fn(ContainerFact) -> Option<cri::ContainerEventResponse> + Send>;

/// The stream `GetContainerEvents` answers with.
pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send + 'static>>;

/// The daemon's container event hub.
pub struct ContainerEvents {
    queue: Mutex<Option<SyncSender<ContainerFact>>>,
    broadcast: broadcast::Sender<cri::ContainerEventResponse>,
    closed: CancellationToken,
}

impl Default for ContainerEvents {
    fn default() -> Self {
        ContainerEvents::new()
    }
}

impl ContainerEvents {
    /// A hub with no publisher yet: facts are dropped until [`ContainerEvents::start`].
    pub fn new() -> ContainerEvents {
        let (broadcast, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
        ContainerEvents {
            queue: Mutex::new(None),
            broadcast,
            closed: CancellationToken::new(),
        }
    }

    /// Reports a fact. Never blocks: without subscribers it is dropped at once, and a full
    /// queue drops it with a warning.
    pub fn emit(&self, container_id: &str, sandbox_id: &str, kind: cri::ContainerEventType) {
        if self.broadcast.receiver_count() == 0 {
            return;
        }
        let fact = ContainerFact {
            container_id: container_id.to_owned(),
            sandbox_id: sandbox_id.to_owned(),
            kind,
            at: crate::containers::now_ns(),
        };
        let queue = lock(&self.queue);
        let Some(sender) = queue.as_ref() else {
            return;
        };
        match sender.try_send(fact) {
            Ok(()) => {}
            Err(TrySendError::Full(fact)) => warn!(
                container_id = %fact.container_id,
                event = fact.kind.as_str_name(),
                "the container event queue is full: event dropped"
            ),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Starts the publisher thread, which builds each fact into an event with `build`. A
    /// second call replaces the first publisher.
    pub fn start(self: &Arc<Self>, build: EventBuilder) -> std::io::Result<()> {
        let (sender, receiver) = sync_channel(QUEUE_DEPTH);
        let broadcast = self.broadcast.clone();
        std::thread::Builder::new()
            .name("bungeo-events".to_owned())
            .spawn(move || publish(&receiver, &build, &broadcast))?;
        *lock(&self.queue) = Some(sender);
        Ok(())
    }

    /// A new subscriber's stream: every event from now on, until the daemon shuts down.
    pub fn subscribe(&self) -> EventStream {
        let receiver = self.broadcast.subscribe();
        let closed = self.closed.clone();
        Box::pin(futures_util::stream::unfold(
            (receiver, closed),
            |(mut receiver, closed)| async move {
                loop {
                    let next = tokio::select! {
                        () = closed.cancelled() => return None,
                        next = receiver.recv() => next,
                    };
                    match next {
                        Ok(event) => return Some((Ok(event), (receiver, closed))),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            warn!(
                                missed,
                                "a container event subscriber fell behind: events skipped"
                            );
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        ))
    }

    /// Ends every subscriber's stream (shutdown) and stops the publisher.
    pub fn close(&self) {
        self.closed.cancel();
        *lock(&self.queue) = None;
    }

    /// How many clients listen.
    pub fn subscribers(&self) -> usize {
        self.broadcast.receiver_count()
    }
}

fn publish(
    receiver: &Receiver<ContainerFact>,
    build: &EventBuilder,
    broadcast: &broadcast::Sender<cri::ContainerEventResponse>,
) {
    // Ends when the hub drops or replaces its sender.
    while let Ok(fact) = receiver.recv() {
        let (id, kind) = (fact.container_id.clone(), fact.kind);
        if let Some(event) = build(fact) {
            // An error only means nobody listens any more.
            let _ = broadcast.send(event);
            debug!(container_id = %id, event = kind.as_str_name(), "container event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::time::Duration;

    fn echo() -> EventBuilder {
        Box::new(|fact: ContainerFact| {
            Some(cri::ContainerEventResponse {
                container_id: fact.container_id,
                container_event_type: fact.kind as i32,
                created_at: fact.at,
                pod_sandbox_status: Some(cri::PodSandboxStatus {
                    id: fact.sandbox_id,
                    ..Default::default()
                }),
                containers_statuses: Vec::new(),
            })
        })
    }

    async fn next(stream: &mut EventStream) -> cri::ContainerEventResponse {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an event in time")
            .expect("an open stream")
            .expect("an event")
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let hub = Arc::new(ContainerEvents::new());
        hub.start(echo()).unwrap();
        // Nobody listens yet: dropped, not queued for later subscribers.
        hub.emit("c0", "p", cri::ContainerEventType::ContainerCreatedEvent);
        let mut a = hub.subscribe();
        let mut b = hub.subscribe();
        use cri::ContainerEventType as T;
        let kinds = [
            T::ContainerCreatedEvent,
            T::ContainerStartedEvent,
            T::ContainerStoppedEvent,
            T::ContainerDeletedEvent,
        ];
        for kind in kinds {
            hub.emit("c1", "p1", kind);
        }
        for stream in [&mut a, &mut b] {
            for kind in kinds {
                let event = next(stream).await;
                assert_eq!(event.container_id, "c1");
                assert_eq!(event.container_event_type, kind as i32);
                assert_eq!(event.pod_sandbox_status.unwrap().id, "p1");
                assert!(event.created_at > 0);
            }
        }
        hub.close();
        assert!(a.next().await.is_none());
        assert!(b.next().await.is_none());
    }

    #[tokio::test]
    async fn a_slow_subscriber_skips_ahead_and_never_blocks_emitters() {
        let hub = Arc::new(ContainerEvents::new());
        hub.start(echo()).unwrap();
        let mut slow = hub.subscribe();
        let total = SUBSCRIBER_BACKLOG * 3;
        let started = std::time::Instant::now();
        for i in 0..total {
            hub.emit(
                &format!("c{i}"),
                "p",
                cri::ContainerEventType::ContainerStartedEvent,
            );
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        // Wait for the publisher to drain the queue, then read: the oldest were skipped.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        while last != format!("c{}", total - 1) {
            assert!(std::time::Instant::now() < deadline, "last seen {last}");
            last = next(&mut slow).await.container_id;
        }
        hub.close();
    }

    #[test]
    fn without_a_publisher_facts_are_dropped() {
        let hub = ContainerEvents::new();
        let _listening = hub.broadcast.subscribe();
        hub.emit("c", "p", cri::ContainerEventType::ContainerCreatedEvent);
        assert_eq!(hub.subscribers(), 1);
    }
}
