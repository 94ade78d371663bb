from collections import Counter

import pytest

from reidfast.data import (BatchedSampler, IdentityBalancedBatchSampler, Sample, SameIdentityPairSampler,
                           UnpairedDomainSampler, VerificationPairSampler)

# 8 ids with 1..8 images each (id 0 has a single image), pids not contiguous
PIDS = [pid * 10 for pid in range(8) for _ in range(pid + 1)]


def test_pk_batches_have_p_identities_of_k_images():
    sampler = IdentityBalancedBatchSampler(PIDS, num_ids=3, num_instances=2, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        counts = Counter(PIDS[i] for i in batch)
        assert len(batch) == 6 and len(counts) == 3 and set(counts.values()) == {2}
    used = Counter(i for b in batches for i in b)
    # an identity with enough images never repeats an image within an epoch
    assert all(n == 1 for i, n in used.items() if PIDS.count(PIDS[i]) >= 2)
    assert list(sampler) == batches  # deterministic: the same images in the same batches
    sampler.set_epoch(1)
    assert list(sampler) != batches and len(sampler) == len(list(sampler))


def test_pk_accepts_samples_and_checks_arguments():
    samples = [Sample(f"{i}.jpg", pid, 0) for i, pid in enumerate(PIDS)]
    assert len(list(IdentityBalancedBatchSampler(samples, 2, 4))) > 0
    with pytest.raises(ValueError, match="only 8 identities"):
        IdentityBalancedBatchSampler(PIDS, num_ids=9, num_instances=2)
    with pytest.raises(ValueError, match="num_instances"):
        IdentityBalancedBatchSampler(PIDS, num_ids=2, num_instances=0)


def test_same_identity_pairs():
    sampler = SameIdentityPairSampler(PIDS, seed=0)
    pairs = list(sampler)
    assert len(pairs) == len(sampler) == len(PIDS)
    assert sorted(a for a, _ in pairs) == list(range(len(PIDS)))  # every image is an anchor once
    for a, b in pairs:
        assert PIDS[a] == PIDS[b]
        assert a != b or PIDS.count(PIDS[a]) == 1  # another image whenever the identity has one
    partners = Counter(b for a, b in SameIdentityPairSampler(PIDS, seed=3) for _ in [0] if PIDS[a] == 70)
    assert len(partners) > 3  # partners are drawn, not fixed


def test_verification_pairs_one_positive_then_three_negatives():
    sampler = VerificationPairSampler(PIDS, num_negatives=3, seed=0)
    pairs = list(sampler)
    assert len(pairs) == len(sampler) == 4 * len(PIDS)
    for start in range(0, len(pairs), 4):
        group = pairs[start:start + 4]
        assert len({a for a, _ in group}) == 1
        anchor = group[0][0]
        assert PIDS[group[0][1]] == PIDS[anchor]
        assert all(PIDS[b] != PIDS[anchor] for _, b in group[1:])
    with pytest.raises(ValueError, match="two identities"):
        VerificationPairSampler([5, 5, 5])


def test_unpaired_domains_cover_both_sides():
    sampler = UnpairedDomainSampler(5, 12, seed=0)
    pairs = list(sampler)
    assert len(pairs) == len(sampler) == 12
    assert sorted(b for _, b in pairs) == list(range(12))
    counts = Counter(a for a, _ in pairs)
    assert set(counts) == set(range(5)) and max(counts.values()) - min(counts.values()) <= 1
    assert pairs != list(UnpairedDomainSampler(5, 12, seed=1))
    assert len(list(UnpairedDomainSampler(5, 12, num_samples=30))) == 30


def test_batched_pairs_follow_the_epoch():
    pids = [0, 0, 1, 1, 1, 2, 2, 3, 3]
    batches = BatchedSampler(SameIdentityPairSampler(pids, seed=4), 4)
    assert len(batches) == 2
    first = list(batches)
    assert [len(b) for b in first] == [4, 4] and all(pids[i] == pids[j] and i != j for b in first for i, j in b)
    assert list(batches) == first
    batches.set_epoch(1)
    assert list(batches) != first
    assert len(BatchedSampler(SameIdentityPairSampler(pids), 4, drop_last=False)) == 3
    with pytest.raises(ValueError, match="cannot fill"):
        BatchedSampler(SameIdentityPairSampler(pids), 10)
