//! Tests of the collectives: real sockets on 127.0.0.1, one thread per rank, every wait
//! bounded by a limit.

use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

use super::nccl::{self, Nccl};
use super::*;

/// No test waits on a rank longer than this.
pub(crate) const LIMIT: Duration = Duration::from_secs(60);

fn listeners(world_size: usize) -> (Vec<TcpListener>, Vec<SocketAddr>) {
    let listeners: Vec<_> = (0..world_size).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    let peers = listeners.iter().map(|l| l.local_addr().expect("address")).collect();
    (listeners, peers)
}

/// Runs `body(rank, listener, peers)` on one thread per rank; results by rank.
fn on_threads<T: Send + 'static>(world_size: usize, body: impl Fn(usize, TcpListener, Vec<SocketAddr>) -> T + Send + Sync + 'static) -> Vec<T> {
    let (listeners, peers) = listeners(world_size);
    let body = Arc::new(body);
    let (sender, receiver) = mpsc::channel();
    for (rank, listener) in listeners.into_iter().enumerate() {
        let (body, sender, peers) = (body.clone(), sender.clone(), peers.clone());
        thread::spawn(move || {
            let _ = sender.send((rank, body(rank, listener, peers)));
        });
    }
    drop(sender);
    let mut results: Vec<Option<T>> = (0..world_size).map(|_| None).collect();
    for _ in 0..world_size {
        let (rank, result) = receiver.recv_timeout(LIMIT).expect("every rank finishes in time, without panicking");
        results[rank] = Some(result);
    }
    results.into_iter().map(|r| r.expect("one result per rank")).collect()
}

/// Joins a ring of `world_size` and runs `body` on each rank.
pub(crate) fn with_ring<T: Send + 'static>(world_size: usize, timeout: Duration, body: impl Fn(usize, &mut TcpRing) -> T + Send + Sync + 'static) -> Vec<T> {
    on_threads(world_size, move |rank, listener, peers| {
        let mut ring = TcpRing::connect(rank, world_size, listener, &peers, timeout).expect("join the ring");
        body(rank, &mut ring)
    })
}

const SIZES: [usize; 8] = [0, 1, 2, 3, 7, 1001, 4099, 100_003];

fn f32_values(rank: usize, numel: usize) -> Vec<f32> {
    (0..numel).map(|i| ((i % 1000) as f32 - 300.0) * (rank as f32 + 1.0)).collect()
}

fn i64_values(rank: usize, numel: usize) -> Vec<i64> {
    // Beyond f64's 53 bits, so only an integer sum is exact.
    (0..numel).map(|i| (1i64 << 55) + (rank as i64) * 1_000_003 + i as i64 * 7 - 5_000).collect()
}

fn f64_values(rank: usize, numel: usize) -> Vec<f64> {
    (0..numel).map(|i| (i as f64 * 0.5 - 17.0) * (rank as f64 + 2.0)).collect()
}

fn sum_over<T: std::iter::Sum<T> + Copy>(world_size: usize, numel: usize, values: fn(usize, usize) -> Vec<T>) -> Vec<T> {
    let per_rank: Vec<Vec<T>> = (0..world_size).map(|rank| values(rank, numel)).collect();
    (0..numel).map(|i| per_rank.iter().map(|v| v[i]).sum()).collect()
}

fn to_vec<T: tch::kind::Element + Default + Clone>(tensor: &Tensor) -> Vec<T> {
    let mut values = vec![T::default(); tensor.numel()];
    tensor.copy_data(&mut values, tensor.numel());
    values
}

#[test]
fn all_reduce_sums_exactly_over_2_3_and_4_ranks() {
    for world_size in [2, 3, 4] {
        let outcomes = with_ring(world_size, LIMIT, move |rank, ring| {
            for segment_bytes in [7, 4096, tcp_ring::DEFAULT_SEGMENT_BYTES] {
                ring.set_segment_bytes(segment_bytes);
                // One element per segment is slow on big tensors: enough to check it on small ones.
                for numel in SIZES.into_iter().filter(|&numel| segment_bytes > 7 || numel < 5000) {
                    let mut floats = Tensor::from_slice(&f32_values(rank, numel));
                    ring.all_reduce_sum(&mut floats).expect("f32 all-reduce");
                    assert_eq!(to_vec::<f32>(&floats), sum_over(world_size, numel, f32_values), "f32, {numel} elements");
                    let mut integers = Tensor::from_slice(&i64_values(rank, numel));
                    ring.all_reduce_sum(&mut integers).expect("i64 all-reduce");
                    assert_eq!(to_vec::<i64>(&integers), sum_over(world_size, numel, i64_values), "i64, {numel} elements");
                    let mut doubles = Tensor::from_slice(&f64_values(rank, numel));
                    ring.all_reduce_sum(&mut doubles).expect("f64 all-reduce");
                    assert_eq!(to_vec::<f64>(&doubles), sum_over(world_size, numel, f64_values), "f64, {numel} elements");
                }
            }
        });
        assert_eq!(outcomes.len(), world_size);
    }
}

#[test]
fn all_reduce_writes_into_non_contiguous_and_shaped_tensors() {
    with_ring(3, LIMIT, |rank, ring| {
        let base = Tensor::from_slice(&f32_values(rank, 35)).reshape([5, 7]);
        let mut transposed = base.tr();
        assert!(!transposed.is_contiguous());
        ring.all_reduce_sum(&mut transposed).expect("all-reduce");
        let expected = Tensor::from_slice(&sum_over(3, 35, f32_values)).reshape([5, 7]).tr();
        assert_eq!(transposed.size(), vec![7, 5]);
        assert!(transposed.equal(&expected));
    });
}

#[test]
fn all_reduce_of_a_slice_of_a_larger_tensor_changes_that_slice_alone() {
    // The ring works in the tensor's own memory: a contiguous view that starts inside its
    // storage is summed in place, and the elements around it stay as they were.
    with_ring(2, LIMIT, |rank, ring| {
        ring.set_segment_bytes(12);
        let whole = Tensor::from_slice(&f32_values(rank, 40));
        let mut middle = whole.narrow(0, 9, 20);
        assert!(middle.is_contiguous());
        ring.all_reduce_sum(&mut middle).expect("all-reduce");
        let summed = sum_over(2, 40, f32_values);
        let mine = f32_values(rank, 40);
        let expected: Vec<f32> = (0..40).map(|i| if (9..29).contains(&i) { summed[i] } else { mine[i] }).collect();
        assert_eq!(to_vec::<f32>(&whole), expected);
    });
}

#[test]
fn broadcast_copies_each_roots_tensor() {
    for world_size in [2, 3, 4] {
        with_ring(world_size, LIMIT, move |rank, ring| {
            ring.set_segment_bytes(4000);
            for root in 0..world_size {
                for numel in SIZES {
                    let mut tensor = Tensor::from_slice(&i64_values(rank, numel));
                    ring.broadcast(&mut tensor, root).expect("broadcast");
                    assert_eq!(to_vec::<i64>(&tensor), i64_values(root, numel), "root {root}, {numel} elements");
                }
            }
            let mut tensor = Tensor::from_slice(&[1.0f32]);
            let error = ring.broadcast(&mut tensor, world_size).expect_err("no such root");
            assert!(error.to_string().contains("root"), "{error}");
        });
    }
}

/// Variables whose gradients are `rank`-dependent integers, plus one without a gradient.
fn variables_with_gradients(rank: usize) -> Vec<Tensor> {
    let shapes: [&[i64]; 4] = [&[3, 5], &[17], &[2, 2, 2], &[1]];
    let mut variables = Vec::new();
    for (index, shape) in shapes.iter().enumerate() {
        let variable = Tensor::zeros(*shape, (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let numel: i64 = shape.iter().product();
        let coefficients = (Tensor::arange(numel, (Kind::Float, tch::Device::Cpu)) * (rank as f64 + 1.0) + (index * 10) as f64).reshape(*shape);
        (&variable * coefficients).sum(Kind::Float).backward();
        variables.push(variable);
    }
    variables.push(Tensor::ones([4], (Kind::Float, tch::Device::Cpu)));
    variables
}

#[test]
fn average_gradients_equals_the_mean_whatever_the_bucket_size() {
    let world_size = 3;
    for bucket_bytes in [16, DEFAULT_BUCKET_BYTES, 1 << 30] {
        with_ring(world_size, LIMIT, move |rank, ring| {
            let variables = variables_with_gradients(rank);
            average_gradients(ring, &variables, bucket_bytes).expect("average");
            let per_rank: Vec<Vec<Tensor>> = (0..world_size).map(variables_with_gradients).collect();
            for (index, variable) in variables.iter().enumerate().take(4) {
                let total = per_rank.iter().map(|v| v[index].grad()).fold(Tensor::zeros_like(&variable.grad()), |a, b| a + b);
                let mean = total / world_size as f64;
                assert!(variable.grad().equal(&mean), "variable {index}, bucket of {bucket_bytes} bytes");
            }
            assert!(!variables[4].grad().defined());
        });
    }
}

#[test]
fn broadcast_from_rank0_overwrites_parameters_that_require_grad() {
    with_ring(3, LIMIT, |rank, ring| {
        let mut tensors = vec![
            Tensor::full([4, 3], rank as f64, (Kind::Float, tch::Device::Cpu)).set_requires_grad(true),
            Tensor::full([5], rank as i64 + 10, (Kind::Int64, tch::Device::Cpu)),
        ];
        broadcast_from_rank0(ring, &mut tensors).expect("broadcast");
        assert_eq!(to_vec::<f32>(&tensors[0].detach()), vec![0.0; 12]);
        assert_eq!(to_vec::<i64>(&tensors[1]), vec![10; 5]);
        assert!(tensors[0].requires_grad());
        // The collectives themselves write into leaves that require grad, too.
        let mut parameter = Tensor::full([3], rank as f64 + 1.0, (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        ring.all_reduce_sum(&mut parameter).expect("all-reduce");
        assert_eq!(to_vec::<f32>(&parameter.detach()), vec![6.0; 3]);
        ring.broadcast(&mut parameter, 2).expect("broadcast");
        assert_eq!(to_vec::<f32>(&parameter.detach()), vec![6.0; 3]);
    });
}

#[test]
fn single_is_a_no_op() {
    let mut single = Single;
    let mut tensor = Tensor::from_slice(&[1.0f32, 2.0]);
    single.all_reduce_sum(&mut tensor).expect("no-op");
    single.broadcast(&mut tensor, 0).expect("no-op");
    assert_eq!(to_vec::<f32>(&tensor), vec![1.0, 2.0]);
    assert!(single.broadcast(&mut tensor, 1).is_err());
    let variables = variables_with_gradients(0);
    average_gradients(&mut single, &variables, 16).expect("no-op");
    assert_eq!(to_vec::<f32>(&variables[1].grad()), (10..27).map(|i| i as f32).collect::<Vec<_>>());
}

#[test]
fn a_world_of_one_ring_is_a_no_op() {
    let (mut listeners, peers) = listeners(1);
    let mut ring = TcpRing::connect(0, 1, listeners.remove(0), &peers, LIMIT).expect("ring of one");
    let mut tensor = Tensor::from_slice(&[3i64, 4]);
    ring.all_reduce_sum(&mut tensor).expect("no-op");
    ring.broadcast(&mut tensor, 0).expect("no-op");
    assert_eq!(to_vec::<i64>(&tensor), vec![3, 4]);
}

#[test]
fn a_rank_that_leaves_mid_all_reduce_fails_the_others_fast() {
    let outcomes = with_ring(3, LIMIT, |rank, ring| {
        if rank == 2 {
            thread::sleep(Duration::from_millis(300));
            return None; // Leaves: `with_ring` drops its ring, closing both connections.
        }
        let mut tensor = Tensor::ones([2_000_000], (Kind::Float, tch::Device::Cpu));
        let started = Instant::now();
        let error = ring.all_reduce_sum(&mut tensor).expect_err("the all-reduce cannot finish");
        let again = ring.all_reduce_sum(&mut tensor).expect_err("a broken ring stays broken");
        Some((started.elapsed(), error.to_string(), again))
    });
    for (rank, outcome) in outcomes.into_iter().enumerate().take(2) {
        let (elapsed, error, again) = outcome.expect("ranks 0 and 1 report");
        assert!(elapsed < Duration::from_secs(5), "rank {rank} took {elapsed:?}: {error}");
        assert!(error.contains("rank "), "rank {rank}: {error}");
        assert!(matches!(again, CollectiveError::Broken(_)), "rank {rank}: {again}");
    }
}

#[test]
fn a_rank_aborted_while_data_flows_fails_the_others_fast() {
    let outcomes = with_ring(3, LIMIT, |rank, ring| {
        ring.set_segment_bytes(4096);
        // Rank 2 aborts itself shortly after its first all-reduce, amid the following ones.
        let first_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let aborter = (rank == 2).then(|| {
            let (handle, first_done) = (ring.abort_handle(), first_done.clone());
            thread::spawn(move || {
                let waiting = Instant::now();
                while !first_done.load(std::sync::atomic::Ordering::SeqCst) && waiting.elapsed() < LIMIT {
                    thread::sleep(Duration::from_millis(1));
                }
                thread::sleep(Duration::from_millis(20));
                handle.abort();
                Instant::now()
            })
        });
        let mut tensor = Tensor::ones([1_000_000], (Kind::Float, tch::Device::Cpu));
        let mut completed = 0;
        let error = loop {
            match ring.all_reduce_sum(&mut tensor) {
                Ok(()) => completed += 1,
                Err(error) => break error,
            }
            first_done.store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(completed < 100_000, "rank {rank} never failed");
        };
        let failed_at = Instant::now();
        (failed_at, aborter.map(|a| a.join().expect("aborter")), completed, error)
    });
    let aborted_at = outcomes[2].1.expect("rank 2 aborted");
    for (rank, (failed_at, _, completed, error)) in outcomes.into_iter().enumerate() {
        let after_abort = failed_at.saturating_duration_since(aborted_at);
        assert!(after_abort < Duration::from_secs(5), "rank {rank} took {after_abort:?}: {error}");
        if rank == 2 {
            assert!(completed > 0);
            assert!(matches!(error, CollectiveError::Aborted), "{error}");
        } else {
            assert!(matches!(error, CollectiveError::PeerLost { .. }), "rank {rank}: {error}");
        }
    }
}

#[test]
fn a_silent_peer_hits_the_timeout() {
    let outcomes = with_ring(2, LIMIT, |rank, ring| {
        if rank == 1 {
            thread::sleep(Duration::from_secs(3));
            return None;
        }
        ring.set_timeout(Duration::from_millis(500)).expect("set the timeout");
        let started = Instant::now();
        let error = ring.all_reduce_sum(&mut Tensor::ones([10], (Kind::Float, tch::Device::Cpu))).expect_err("silence");
        Some((started.elapsed(), error))
    });
    let (elapsed, error) = outcomes.into_iter().next().flatten().expect("rank 0 reports");
    assert!(matches!(error, CollectiveError::Timeout { rank: 1, .. }), "{error}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn abort_unblocks_a_rank_waiting_on_a_silent_peer() {
    let outcomes = with_ring(2, LIMIT, |rank, ring| {
        if rank == 1 {
            thread::sleep(Duration::from_secs(2));
            return None;
        }
        let handle = ring.abort_handle();
        let aborter = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            handle.abort();
        });
        let started = Instant::now();
        let error = ring.all_reduce_sum(&mut Tensor::ones([1000], (Kind::Float, tch::Device::Cpu))).expect_err("aborted");
        let elapsed = started.elapsed();
        aborter.join().expect("aborter");
        let again = ring.broadcast(&mut Tensor::ones([1], (Kind::Float, tch::Device::Cpu)), 0).expect_err("still aborted");
        Some((elapsed, error, again))
    });
    let (elapsed, error, again) = outcomes.into_iter().next().flatten().expect("rank 0 reports");
    assert!(matches!(error, CollectiveError::Aborted), "{error}");
    assert!(matches!(again, CollectiveError::Aborted), "{again}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn a_handshake_with_another_world_size_is_an_error_naming_it() {
    let unused = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address");
    let outcomes = on_threads(2, move |rank, listener, mut peers| {
        // Rank 1 believes in a world of three.
        let world_size = if rank == 1 { 3 } else { 2 };
        if rank == 1 {
            peers.push(unused);
        }
        let started = Instant::now();
        let error = TcpRing::connect(rank, world_size, listener, &peers, Duration::from_secs(20)).expect_err("mismatch");
        (started.elapsed(), error)
    });
    for (rank, (elapsed, error)) in outcomes.into_iter().enumerate() {
        assert!(matches!(error, CollectiveError::Mismatch(_)), "rank {rank}: {error}");
        assert!(error.to_string().contains("world size 3"), "rank {rank}: {error}");
        assert!(elapsed < Duration::from_secs(5), "rank {rank}: {elapsed:?}");
    }
}

#[test]
fn ranks_that_start_different_collectives_get_a_mismatch() {
    let outcomes = with_ring(2, LIMIT, |rank, ring| {
        let mut tensor = Tensor::ones([10 + rank as i64], (Kind::Float, tch::Device::Cpu));
        ring.all_reduce_sum(&mut tensor).expect_err("sizes differ")
    });
    for error in outcomes {
        assert!(matches!(error, CollectiveError::Mismatch(_)), "{error}");
        assert!(error.to_string().contains("all-reduce #1 of 1"), "{error}");
    }
}

#[test]
fn tensors_the_ring_cannot_carry_are_refused() {
    with_ring(2, LIMIT, |_, ring| {
        let mut half = Tensor::ones([4], (Kind::Half, tch::Device::Cpu));
        let error = ring.all_reduce_sum(&mut half).expect_err("f16 is not supported");
        assert!(matches!(error, CollectiveError::Unsupported(_)), "{error}");
        // Refused before anything went on the wire: the ring still works.
        let mut tensor = Tensor::ones([4], (Kind::Float, tch::Device::Cpu));
        ring.all_reduce_sum(&mut tensor).expect("all-reduce");
        assert_eq!(to_vec::<f32>(&tensor), vec![2.0; 4]);
    });
}

#[test]
fn nccl_without_the_library_is_a_clear_error() {
    // With LD_LIBRARY_PATH pointing at a libnccl.so on a machine without a GPU driver, the
    // driver is what is missing; with neither, NCCL is named first. Never a panic.
    let expected = match (nccl::nccl_library_present(), tch::Cuda::is_available()) {
        (false, _) => nccl::NCCL_MISSING,
        (true, false) if nccl::check_available().is_err() => nccl::DRIVER_MISSING,
        _ => {
            eprintln!("libnccl.so and a cuda driver are here: nothing to check");
            return;
        }
    };
    for outcome in [Nccl::unique_id().map(|_| ()), Nccl::new(0, 1, 0, &[0; nccl::UNIQUE_ID_BYTES]).map(|_| ())] {
        match outcome {
            Err(CollectiveError::NcclUnavailable(message)) => assert_eq!(message, expected),
            other => panic!("expected NcclUnavailable, got {other:?}"),
        }
    }
}
