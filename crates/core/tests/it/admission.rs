//! The priority gate: order of service, the starvation bound, displacement when full, and no
//! permit lost when waiters give up.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_prompt_orchestrator::{AdmissionConfig, GatePermit, PipelineError, Priority, PriorityGate, Stage};

fn gate(max_in_flight: usize, max_queued: usize, starvation_bound: u32) -> PriorityGate {
    PriorityGate::new(AdmissionConfig {
        max_in_flight: NonZeroUsize::new(max_in_flight).unwrap(),
        max_queued,
        starvation_bound,
    })
}

const OVERLOADED: PipelineError = PipelineError::Overloaded { stage: Stage::Rag };

/// Queues a waiter that, once let in, reports `name` and gives its permit straight back.
async fn waiter(
    gate: &PriorityGate,
    priority: Priority,
    name: &'static str,
    served: &mpsc::UnboundedSender<&'static str>,
) -> JoinHandle<Result<(), PipelineError>> {
    let (gate2, served) = (gate.clone(), served.clone());
    let task = tokio::spawn(async move {
        let permit = gate2.acquire(priority).await?;
        served.send(name).unwrap();
        drop(permit);
        Ok(())
    });
    // On the test's single-threaded runtime, yielding runs the new task until it waits at the
    // gate, so waiters queue in the order the test makes them.
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    task
}

async fn drain(rx: &mut mpsc::UnboundedReceiver<&'static str>, n: usize) -> Vec<&'static str> {
    let mut order = Vec::new();
    for _ in 0..n {
        order.push(rx.recv().await.unwrap());
    }
    order
}

#[tokio::test]
async fn higher_priority_is_served_first_and_each_level_in_arrival_order() {
    let gate = gate(1, 16, 100);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let holder = gate.acquire(Priority::Low).await.unwrap();
    let mut tasks = Vec::new();
    for (priority, name) in [
        (Priority::Low, "low-1"),
        (Priority::Normal, "normal-1"),
        (Priority::High, "high-1"),
        (Priority::Low, "low-2"),
        (Priority::High, "high-2"),
    ] {
        tasks.push(waiter(&gate, priority, name, &tx).await);
    }
    assert_eq!(gate.load(), (1, 5));
    drop(holder);
    assert_eq!(
        drain(&mut rx, 5).await,
        ["high-1", "high-2", "normal-1", "low-1", "low-2"]
    );
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(gate.load(), (0, 0));
}

#[tokio::test]
async fn a_waiting_request_is_overtaken_at_most_starvation_bound_times() {
    let gate = gate(1, 16, 2);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let holder = gate.acquire(Priority::High).await.unwrap();
    let low = waiter(&gate, Priority::Low, "low", &tx).await;
    let mut highs = Vec::new();
    for name in ["high-1", "high-2", "high-3", "high-4"] {
        highs.push(waiter(&gate, Priority::High, name, &tx).await);
    }
    drop(holder);
    // Sustained high-priority load: the low request goes after exactly two highs overtook it.
    assert_eq!(
        drain(&mut rx, 5).await,
        ["high-1", "high-2", "low", "high-3", "high-4"]
    );
    low.await.unwrap().unwrap();
    for task in highs {
        task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_bound_of_zero_serves_in_arrival_order() {
    let gate = gate(1, 16, 0);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let holder = gate.acquire(Priority::High).await.unwrap();
    let mut tasks = Vec::new();
    for (priority, name) in [
        (Priority::Low, "low"),
        (Priority::High, "high"),
        (Priority::Normal, "normal"),
    ] {
        tasks.push(waiter(&gate, priority, name, &tx).await);
    }
    drop(holder);
    assert_eq!(drain(&mut rx, 3).await, ["low", "high", "normal"]);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_full_queue_sheds_its_newest_lowest_priority_waiter_for_a_higher_one() {
    let gate = gate(1, 2, 100);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let holder = gate.acquire(Priority::Normal).await.unwrap();
    let low_1 = waiter(&gate, Priority::Low, "low-1", &tx).await;
    let low_2 = waiter(&gate, Priority::Low, "low-2", &tx).await;
    assert_eq!(gate.load(), (1, 2));

    // Full: a high request displaces the newest low one, which hears `Overloaded` at once.
    let high = waiter(&gate, Priority::High, "high", &tx).await;
    assert_eq!(low_2.await.unwrap(), Err(OVERLOADED));
    // A normal one displaces the remaining low one.
    let normal = waiter(&gate, Priority::Normal, "normal", &tx).await;
    assert_eq!(low_1.await.unwrap(), Err(OVERLOADED));
    // Nothing lower than low: a low newcomer is refused itself, and so is an equal one.
    assert_eq!(gate.acquire(Priority::Low).await.unwrap_err(), OVERLOADED);
    assert_eq!(gate.acquire(Priority::Normal).await.unwrap_err(), OVERLOADED);
    assert_eq!(gate.load(), (1, 2));
    let levels: Vec<_> = gate
        .levels()
        .iter()
        .map(|l| (l.priority, l.queued, l.admitted, l.shed))
        .collect();
    assert_eq!(
        levels,
        [
            (Priority::High, 1, 0, 0),
            (Priority::Normal, 1, 1, 1),
            (Priority::Low, 0, 0, 3)
        ]
    );

    drop(holder);
    assert_eq!(drain(&mut rx, 2).await, ["high", "normal"]);
    high.await.unwrap().unwrap();
    normal.await.unwrap().unwrap();
    assert_eq!(gate.load(), (0, 0));
}

#[tokio::test]
async fn a_waiter_that_gives_up_frees_its_place_and_loses_no_permit() {
    let gate = gate(1, 4, 100);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let holder = gate.acquire(Priority::Normal).await.unwrap();
    let gone = waiter(&gate, Priority::High, "gone", &tx).await;
    let stays = waiter(&gate, Priority::Low, "stays", &tx).await;
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    assert_eq!(gate.load(), (1, 1));
    drop(holder);
    assert_eq!(drain(&mut rx, 1).await, ["stays"]);
    stays.await.unwrap().unwrap();
    assert_eq!(gate.load(), (0, 0));
}

/// A permit held by a test task, and the count of permits out that it is part of.
struct Holding {
    held: Arc<AtomicUsize>,
    _permit: GatePermit,
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Many callers at random priorities, some giving up while they wait: never more permits
    /// out than the limit, every caller either served or told `Overloaded`, and at the end no
    /// permit is held and nobody waits.
    #[test]
    fn permits_are_bounded_and_none_leak(
        max_in_flight in 1usize..4,
        max_queued in 0usize..6,
        bound in 0u32..4,
        callers in proptest::collection::vec((0u8..3, any::<bool>(), 0u8..3), 1..40),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        runtime.block_on(async {
            let gate = gate(max_in_flight, max_queued, bound);
            let held = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for (rank, gives_up, yields) in callers {
                let priority = [Priority::Low, Priority::Normal, Priority::High][usize::from(rank)];
                let (gate, held) = (gate.clone(), held.clone());
                let task = tokio::spawn(async move {
                    let permit: GatePermit = gate.acquire(priority).await?;
                    // Counted out before the permit goes back, also when the task is aborted
                    // while it holds it (fields drop in order: the count, then the permit).
                    let holding = Holding { held, _permit: permit };
                    let now = holding.held.fetch_add(1, Ordering::SeqCst) + 1;
                    assert!(now <= max_in_flight, "{now} permits out, limit {max_in_flight}");
                    for _ in 0..yields {
                        tokio::task::yield_now().await;
                    }
                    Ok::<_, PipelineError>(())
                });
                if gives_up {
                    task.abort();
                }
                tasks.push(task);
            }
            for task in tasks {
                match task.await {
                    Ok(result) => assert!(matches!(result, Ok(()) | Err(OVERLOADED))),
                    Err(e) => assert!(e.is_cancelled()),
                }
            }
            assert_eq!(gate.load(), (0, 0));
        });
    }
}
