"""What a server's requests share. The CPU cores (runtime/cores.py): the listener's windows and the
scheduler's decode steps never overlap where they would oversubscribe the cores, are served in the order
asked, and change no answer. The KV cache: each sequence has its own cells, and a request that cannot fit
them is refused before it takes a sequence."""

from __future__ import annotations

import base64
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="gamma-rt serve needs the serve extra")

from gamma_rt.runtime.options import RuntimeOptions  # noqa: E402
from gamma_rt.runtime import cores as cores_module  # noqa: E402
from gamma_rt.runtime.cores import Cores, cores_shared  # noqa: E402
from gamma_rt.runtime.serve import service as service_module  # noqa: E402
from gamma_rt.runtime.serve.request_audio import open_request_audio  # noqa: E402
from gamma_rt.runtime.serve.protocol import RequestError, parse_chat_request  # noqa: E402
from gamma_rt.runtime.engine.events import Done, Failed, Piece  # noqa: E402
from gamma_rt.runtime.serve.chat_job import ChatJob  # noqa: E402
from gamma_rt.runtime.serve.service import ServeOptions, Service  # noqa: E402
from gamma_rt.synth import Music, write  # noqa: E402

LIMIT_S = 60


def test_turns_never_overlap_and_are_taken_in_the_order_asked():
    cores = Cores(shared=True)
    held, order, overlaps = [0], [], []
    first_in = threading.Event()

    def worker(name: str, hold_s: float) -> None:
        with cores.turn():
            held[0] += 1
            overlaps.append(held[0] > 1)
            order.append(name)
            first_in.set()
            time.sleep(hold_s)
            held[0] -= 1

    first = threading.Thread(target=worker, args=("first", 0.2))
    first.start()
    first_in.wait(LIMIT_S)
    later = []
    for name in ("second", "third", "fourth"):
        later.append(threading.Thread(target=worker, args=(name, 0.01)))
        later[-1].start()
        time.sleep(0.03)  # each asks while the first still holds the cores
    for t in [first, *later]:
        t.join(LIMIT_S)
    assert order == ["first", "second", "third", "fourth"] and not any(overlaps)


def test_cores_are_shared_only_when_both_engines_run_on_the_cpu_with_more_threads_than_cores(monkeypatch):
    monkeypatch.setattr(cores_module, "available_cores", lambda: 2)
    assert cores_shared("ort-cpu", 0, 2) and cores_shared("ort-cpu", 0, None)
    assert not cores_shared("ort-cpu", 0, 1)  # one core each
    assert not cores_shared("ort-cuda", 0, 2) and not cores_shared("tensorrt", 0, 2)
    assert not cores_shared("ort-cpu", 999, 2)  # the decoder on the GPU
    monkeypatch.setattr(cores_module, "available_cores", lambda: 16)
    assert not cores_shared("ort-cpu", 0, 4)


def answer(service: Service, song, question: str, seed: int, max_tokens: int = 24) -> str:
    """One request through the scheduler as the HTTP handler submits it; the answer's text (AssertionError
    with the message of a Failed)."""
    body = {"model": service.model, "max_tokens": max_tokens, "temperature": 0.9, "seed": seed, "messages": [
        {"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(song.read_bytes()).decode(),
                                                     "format": "wav"}},
            {"type": "text", "text": question}]}]}
    chat = parse_chat_request(body, service.model, service.limits)
    events: queue.Queue = queue.Queue()
    service.scheduler.submit(ChatJob(chat, open_request_audio(chat.audio, service.sample_rate, service.limits),
                                     events.put, service.limits))
    text = []
    while True:
        event = events.get(timeout=LIMIT_S)
        if isinstance(event, Piece):
            text.append(event.text)
        elif isinstance(event, Done):
            return "".join(text)
        else:
            assert not isinstance(event, Failed), event.message


def test_taking_turns_gives_the_answers_of_one_request_at_a_time(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(service_module, "cores_shared", lambda *_: True)
    songs = [write(tmp_path / f"{k}.wav", Music(seconds, rate=16000, seed=k), subtype="PCM_16")
             for k, seconds in enumerate((4.0, 35.0, 3.0))]  # the long one is encoded over two turns
    jobs = [(songs[0], "What genre is this?", 7), (songs[1], "Which instruments play?", 3),
            (songs[2], "What is the tempo?", 11)]
    options = ServeOptions(parallel=2, max_tokens=64, max_audio_seconds=60, model_name="tiny")
    with Service.open(tiny_bundle, RuntimeOptions(threads=1), options) as service:
        assert service.listener.cores.shared and "take turns" in service.describe()
        sequential = [answer(service, *job) for job in jobs]
        with ThreadPoolExecutor(len(jobs)) as pool:
            concurrent = list(pool.map(lambda job: answer(service, *job), jobs))
    assert concurrent == sequential and len(set(sequential)) == len(jobs)


def test_a_request_past_its_sequences_cells_is_400_before_it_takes_one(tiny_bundle, tmp_path):
    song = write(tmp_path / "song.wav", Music(3.0, rate=16000, seed=0), subtype="PCM_16")
    options = ServeOptions(parallel=2, ctx_size=2048, max_tokens=2000, max_audio_seconds=60, model_name="tiny")
    with Service.open(tiny_bundle, RuntimeOptions(threads=1), options) as service:
        assert service.pipeline.session.cells_per_sequence == 1024
        assert answer(service, song, "What genre is this?", 1, max_tokens=16)
        with pytest.raises(RequestError, match=r"each of the server's sequences holds 1024 \(--ctx-size / ") as e:
            answer(service, song, "What genre is this?", 1, max_tokens=1500)  # refused by submit, before queueing
        assert e.value.status == 400
        deadline = time.monotonic() + LIMIT_S  # the scheduler counts it out just after it answers
        while service.scheduler.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.scheduler.in_flight == 0


def test_steps_go_in_increasing_sequence_order_and_a_request_takes_the_lowest_free_sequence(tiny_bundle, tmp_path):
    # llama.cpp runs a batch over cells per sequence as one pass only for consecutive ids in increasing order
    # (each other run is a pass of its own, reading all the weights again). Before, a request took the
    # sequence freed longest ago: after one lone request, the next four ran as [1, 2, 3, 0], two passes a step.
    songs = [write(tmp_path / f"{k}.wav", Music(3.0, rate=16000, seed=k), subtype="PCM_16") for k in range(4)]
    options = ServeOptions(parallel=4, max_tokens=32, max_audio_seconds=10, model_name="tiny")
    with Service.open(tiny_bundle, RuntimeOptions(threads=1), options) as service:
        session, steps, pace = service.scheduler.session, [], {"waiting": False}
        real_step = session.step

        def step(items, samplers):
            seqs = [seq for seq, _ in items]
            steps.append(seqs)
            if len(seqs) == len(jobs):
                pace["waiting"] = False
            # the tiny model answers in a few steps, faster than the listener encodes the next song (more so on a
            # loaded machine): until all four are in, steps go slowly, so the four meet and run as one batch
            time.sleep(0.3 if pace["waiting"] else 0.02)
            return real_step(items, samplers)

        session.step = step
        jobs = [(song, "What genre is this?", k) for k, song in enumerate(songs)]
        for _ in range(2):
            answer(service, *jobs[0])
            alone = steps[-1]
            start = len(steps)
            pace["waiting"] = True
            with ThreadPoolExecutor(len(jobs)) as pool:
                list(pool.map(lambda job: answer(service, *job, max_tokens=32), jobs))
            assert alone == [0]
            assert [0, 1, 2, 3] in steps[start:]  # the four answers' steps, as one batch
    assert all(seqs == sorted(seqs) for seqs in steps)
    assert sum(seqs == [0, 1, 2, 3] for seqs in steps) >= 4
