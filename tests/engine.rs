//! The engine (continuous batching, prefix reuse, cancellation) against one-at-a-time generation, on the
//! CPU and, when an adapter exists, on wgpu: batched, prefix-reusing generation must give exactly the
//! tokens of running each request alone.

#[path = "common.rs"]
mod common;

use std::path::Path;
use std::sync::mpsc::Receiver;

use common::fixtures_root;
use volt_runtime::backend::cpu::CpuBackend;
use volt_runtime::dtype::{KvDtype, WeightDtype};
use volt_runtime::engine::{Completion, Engine, Event, Request};
use volt_runtime::generate::{generate, GenerateOptions};
use volt_runtime::sampler::SamplingParams;
use volt_runtime::session::{BackendSession, Session};
use volt_wgpu::{adapters, Gpu, WgpuBackend};

fn session(dir: &Path, backend: &str, slots: usize) -> Box<dyn Session + Send> {
    session_with_pool(dir, backend, slots, None)
}

/// A session whose full-attention KV pool holds `pool_tokens` positions (default: every slot's context).
fn session_with_pool(dir: &Path, backend: &str, slots: usize, pool_tokens: Option<usize>) -> Box<dyn Session + Send> {
    match backend {
        "cpu" => Box::new(
            BackendSession::load_with_pool(CpuBackend::new(WeightDtype::F32), dir, slots, pool_tokens).unwrap(),
        ),
        _ => {
            let mut wgpu = WgpuBackend::with_gpu(Gpu::open_default().unwrap(), WeightDtype::F32, 1024).unwrap();
            if backend == "wgpu fp8 KV" {
                wgpu.set_kv_dtype(KvDtype::Fp8);
            }
            Box::new(BackendSession::load_with_pool(wgpu, dir, slots, pool_tokens).unwrap())
        }
    }
}

/// The backends to run on: the CPU, and wgpu (its default f16 KV, and fp8 KV) when an adapter exists.
fn backends() -> Vec<&'static str> {
    if adapters().is_empty() {
        println!("SKIP the wgpu half: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        vec!["cpu"]
    } else {
        vec!["cpu", "wgpu", "wgpu fp8 KV"]
    }
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop_strings: vec![],
        ignore_eos: true,
    }
}

/// Every event of a request until its last; panics on an error event.
fn finish(events: Receiver<Event>) -> (Vec<u32>, Completion) {
    let mut streamed = Vec::new();
    for e in events {
        match e {
            Event::Token { id, .. } => streamed.push(id),
            Event::Text(_) => {}
            Event::Done(c) => return (streamed, c),
            Event::Error(e) => panic!("request failed: {e}"),
        }
    }
    panic!("the event stream ended without Done or Error");
}

/// Deterministic prompts of the given lengths over a vocabulary.
fn prompts(lengths: &[usize], vocab: usize) -> Vec<Vec<u32>> {
    lengths
        .iter()
        .enumerate()
        .map(|(p, &n)| (0..n).map(|i| ((i * 31 + p * 17 + 3) % vocab) as u32).collect())
        .collect()
}

/// Greedy generation of each prompt alone, on slot 0 of `session`.
fn one_at_a_time(session: &mut dyn Session, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    prompts
        .iter()
        .map(|p| {
            generate(session, 0, p, None, &[], &greedy(max_tokens), |_| {})
                .unwrap()
                .tokens
        })
        .collect()
}

/// Submits every prompt at once and checks that each request streams, and ends with, its `expected` tokens.
fn all_at_once_gives(engine: &Engine, prompts: &[Vec<u32>], max_tokens: usize, expected: &[Vec<u32>], label: &str) {
    let pending: Vec<_> = prompts
        .iter()
        .map(|p| {
            engine
                .submit(Request {
                    prompt: p.clone(),
                    options: greedy(max_tokens),
                })
                .1
        })
        .collect();
    for (i, events) in pending.into_iter().enumerate() {
        let (streamed, done) = finish(events);
        assert_eq!(streamed, expected[i], "{label} request {i}: streamed tokens");
        assert_eq!(done.tokens, expected[i], "{label} request {i}");
    }
}

#[test]
fn batched_generation_gives_the_tokens_of_one_at_a_time() {
    // Sliding windows of 4-6 with KV-sharing full layers (volt), sinks (gpt_oss), plain sliding (mistral):
    // prompts up to 40 tokens run past every window.
    for backend in backends() {
        for fixture in ["volt", "volt_topk", "gpt_oss", "mistral", "qwen3_moe"] {
            let dir = fixtures_root().join(fixture);
            let mut alone = session(&dir, backend, 1);
            let vocab = alone.spec().vocab_size;
            let prompts = prompts(&[13, 3, 40, 7, 22, 9], vocab);
            let expected = one_at_a_time(alone.as_mut(), &prompts, 10);
            // Three slots for six requests: some wait in the queue and join as others leave.
            let engine = Engine::start(session(&dir, backend, 3), None, vec![]);
            all_at_once_gives(&engine, &prompts, 10, &expected, &format!("{backend} {fixture}"));
            let ahead = engine.stats().prepared_ahead;
            if backend.starts_with("wgpu") {
                // Decode steps are recorded while the step before them runs.
                assert!(ahead > 0, "{fixture}: no step was prepared ahead on wgpu");
            }
            println!(
                "{backend} {fixture}: 6 requests on 3 slots match one-at-a-time greedy ({ahead} steps prepared ahead)"
            );
        }
    }
}

#[test]
fn a_full_kv_pool_makes_sequences_wait_or_yield_without_changing_a_token() {
    // A pool of 3 pages (96 positions) for 4 slots, and sequences of up to 74 positions (3 pages each):
    // requests wait for pages, and decodes that need a page preempt the youngest sequence, which resumes
    // later by prefilling again. Every token must be the one of running each request alone.
    for backend in backends() {
        for fixture in ["volt", "qwen3_moe"] {
            let dir = fixtures_root().join(fixture);
            let mut alone = session(&dir, backend, 1);
            let vocab = alone.spec().vocab_size;
            let prompts = prompts(&[40, 30, 50, 20, 35, 45], vocab);
            let expected = one_at_a_time(alone.as_mut(), &prompts, 24);
            let small = session_with_pool(&dir, backend, 4, Some(96));
            assert_eq!((small.kv().pages().pages(), small.context()), (3, 96));
            let engine = Engine::start(small, None, vec![]);
            all_at_once_gives(&engine, &prompts, 24, &expected, &format!("{backend} {fixture}"));
            let stats = engine.stats();
            assert!(stats.preempted > 0, "{backend} {fixture}: no sequence was preempted");
            assert_eq!(stats.completed, 6);
            println!(
                "{backend} {fixture}: 6 requests through a 3-page pool, {} preemption(s), tokens unchanged",
                stats.preempted
            );
        }
    }
}

#[test]
fn a_step_longer_than_one_submission_is_recorded_again_with_its_tokens() {
    // Weights split into many parts make a step's dispatches outgrow the params ring, so part of a step
    // is submitted while it is recorded and its late tokens cannot be filled in: it is recorded again.
    if adapters().is_empty() {
        println!("SKIP: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    let dir = fixtures_root().join("qwen3_fp8");
    let split = || {
        let mut wgpu = WgpuBackend::with_gpu(Gpu::open_default().unwrap(), WeightDtype::F32, 1024).unwrap();
        wgpu.limit_binding(4096);
        Box::new(BackendSession::load(wgpu, &dir, 2).unwrap()) as Box<dyn Session + Send>
    };
    let mut alone = split();
    let vocab = alone.spec().vocab_size;
    let prompts = prompts(&[9, 14], vocab);
    let expected = one_at_a_time(alone.as_mut(), &prompts, 8);
    let engine = Engine::start(split(), None, vec![]);
    all_at_once_gives(&engine, &prompts, 8, &expected, "split weights");
}

#[test]
fn a_second_turn_prefills_only_its_new_tokens() {
    for backend in backends() {
        for fixture in ["volt", "gpt_oss"] {
            let dir = fixtures_root().join(fixture);
            let mut alone = session(&dir, backend, 1);
            let engine = Engine::start(session(&dir, backend, 2), None, vec![]);
            let first = prompts(&[30], alone.spec().vocab_size).remove(0);
            let (_, turn1) = finish(
                engine
                    .submit(Request {
                        prompt: first.clone(),
                        options: greedy(8),
                    })
                    .1,
            );
            // The next turn: the whole first exchange, then a new message of 5 tokens.
            let mut second = first.clone();
            second.extend(&turn1.tokens);
            second.extend([5, 9, 2, 7, 1]);
            let (_, turn2) = finish(
                engine
                    .submit(Request {
                        prompt: second.clone(),
                        options: greedy(8),
                    })
                    .1,
            );
            // Cached: the first prompt and every reply token but the last (never fed: the turn ended on it).
            let prefilled = turn2.prompt_tokens - turn2.cached_tokens;
            assert_eq!(prefilled, 5 + 1, "{backend} {fixture}: prefilled {prefilled} tokens");
            let expected = generate(alone.as_mut(), 0, &second, None, &[], &greedy(8), |_| {})
                .unwrap()
                .tokens;
            assert_eq!(turn2.tokens, expected, "{backend} {fixture}: second turn");

            // A prompt that leaves the cached one early, where the sliding windows have moved on: the CPU cache
            // no longer holds that window, so it is prefilled again; the output is right either way.
            let mut branch = first[..12].to_vec();
            branch.extend([3, 3, 4]);
            let (_, turn3) = finish(
                engine
                    .submit(Request {
                        prompt: branch.clone(),
                        options: greedy(8),
                    })
                    .1,
            );
            let expected = generate(alone.as_mut(), 0, &branch, None, &[], &greedy(8), |_| {})
                .unwrap()
                .tokens;
            assert_eq!(turn3.tokens, expected, "{backend} {fixture}: branch");
            println!(
                "{backend} {fixture}: second turn prefilled {prefilled} of {} tokens; branch reused {} of {}",
                turn2.prompt_tokens, turn3.cached_tokens, turn3.prompt_tokens
            );
        }
    }
}

#[test]
fn a_client_that_goes_away_frees_its_sequence() {
    let dir = fixtures_root().join("volt");
    // One slot: the second request can only run once the first one's slot is freed.
    let engine = Engine::start(session(&dir, "cpu", 1), None, vec![]);
    let (_, events) = engine.submit(Request {
        prompt: vec![1, 2, 3],
        options: greedy(200),
    });
    let first: Vec<Event> = events.iter().take(2).collect();
    assert!(matches!(first[0], Event::Token { .. }), "{first:?}");
    drop(events);
    let (_, done) = finish(
        engine
            .submit(Request {
                prompt: vec![4, 5, 6],
                options: greedy(4),
            })
            .1,
    );
    assert_eq!(done.tokens.len(), 4);

    // Cancelling by id works the same way.
    let (id, events) = engine.submit(Request {
        prompt: vec![1, 2, 3],
        options: greedy(200),
    });
    assert!(matches!(events.recv().unwrap(), Event::Token { .. }));
    engine.cancel(id);
    let rest: Vec<Event> = events.iter().collect();
    assert!(rest.len() < 200 && !rest.iter().any(|e| matches!(e, Event::Done(_))));
    let (_, done) = finish(
        engine
            .submit(Request {
                prompt: vec![7],
                options: greedy(3),
            })
            .1,
    );
    assert_eq!(done.tokens.len(), 3);
}

#[test]
fn bad_requests_get_an_error_event_and_the_engine_goes_on() {
    let dir = fixtures_root().join("volt");
    let engine = Engine::start(session(&dir, "cpu", 2), None, vec![]);
    let cases = [
        (vec![], "empty input"),
        (vec![1, 100_000], "outside the vocabulary"),
        (vec![1; 300], "the context is"),
    ];
    for (prompt, needle) in cases {
        let (_, events) = engine.submit(Request {
            prompt,
            options: greedy(4),
        });
        match events.recv().unwrap() {
            Event::Error(e) => assert!(e.contains(needle), "{e}"),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    let (_, done) = finish(
        engine
            .submit(Request {
                prompt: vec![1, 2],
                options: greedy(3),
            })
            .1,
    );
    assert_eq!(done.tokens.len(), 3);
}

/// The opt-in routing trace delivers every step's MoE routing (each token of each MoE layer, as many
/// tokens as the step fed) while it is on and nothing after; the KV usage follows the cached tokens.
#[test]
fn routing_trace_and_kv_usage_follow_the_steps() {
    let dir = fixtures_root().join("volt");
    let cpu = session(&dir, "cpu", 1);
    let vocab = cpu.spec().vocab_size;
    let engine = Engine::start(cpu, None, vec![]);
    assert_eq!(engine.kv_usage().used_bytes, 0);
    assert!(engine.kv_usage().capacity_bytes > 0);
    let (to, trace) = std::sync::mpsc::channel();
    engine.trace_routing(Some(to));
    let prompt = prompts(&[20], vocab).remove(0);
    let (_, done) = finish(
        engine
            .submit(Request {
                prompt: prompt.clone(),
                options: greedy(4),
            })
            .1,
    );
    let steps: Vec<_> = trace.try_iter().collect();
    // One prefill step (20 tokens) and one step per generated token after the first.
    assert_eq!(steps.len(), 1 + done.tokens.len() - 1, "{} steps", steps.len());
    let moe_layers = steps[0].len();
    assert!(moe_layers > 0);
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step.len(), moe_layers);
        for layer in step {
            let tokens = if i == 0 { prompt.len() } else { 1 };
            assert_eq!(layer.chosen.len(), tokens);
            assert_eq!(layer.probs.len(), tokens * layer.n_experts);
        }
    }
    // The scheduler publishes the usage after the step that sent Done: wait for it.
    let cached = prompt.len() + done.tokens.len() - 1;
    let start = std::time::Instant::now();
    while engine.kv_usage().cached_tokens != cached && start.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let usage = engine.kv_usage();
    assert_eq!(usage.cached_tokens, cached);
    assert!(usage.used_bytes > 0 && usage.used_bytes <= usage.capacity_bytes);

    engine.trace_routing(None);
    finish(
        engine
            .submit(Request {
                prompt,
                options: greedy(2),
            })
            .1,
    );
    assert_eq!(trace.try_iter().count(), 0, "tracing was turned off");
}
