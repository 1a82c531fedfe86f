//! The Double Ratchet core on its own: both profiles, both initialization styles, limits.

use rand::SeedableRng;
use rand::rngs::StdRng;
use strait_signal::error::SignalError;
use strait_signal::keys::KeyPair;
use strait_signal::ratchet::{LIBSIGNAL_V3, OMEMO2, RatchetConfig, RatchetState, SendingKeys};

fn pair(
    config: RatchetConfig,
    libsignal_style: bool,
    rng: &mut StdRng,
) -> (RatchetState, RatchetState) {
    let sk = [7u8; 32];
    let ck0 = [9u8; 32];
    let spk = KeyPair::generate(rng);
    let alice = RatchetState::new_initiator(
        config,
        sk,
        spk.public,
        libsignal_style.then_some(ck0),
        KeyPair::generate(rng),
    )
    .unwrap();
    let bob = RatchetState::new_responder(config, sk, spk, libsignal_style.then_some(ck0));
    (alice, bob)
}

fn deliver(to: &mut RatchetState, k: &SendingKeys, rng: &mut StdRng) -> Result<(), SignalError> {
    let mut trial = to.clone();
    let got = trial.receiving_keys(&k.ratchet_key, k.counter, k.previous_counter, rng)?;
    assert!(got == k.keys, "receiver derived different keys");
    *to = trial;
    Ok(())
}

#[test]
fn spec_style_omemo2_roundtrip_and_labels() {
    let mut rng = StdRng::seed_from_u64(1);
    let (mut a, mut b) = pair(OMEMO2, false, &mut rng);
    assert!(matches!(
        b.next_sending_keys(),
        Err(SignalError::NoSendingChain)
    ));
    let sent: Vec<_> = (0..3).map(|_| a.next_sending_keys().unwrap()).collect();
    for i in [2, 0, 1] {
        deliver(&mut b, &sent[i], &mut rng).unwrap();
    }
    let r = b.next_sending_keys().unwrap();
    deliver(&mut a, &r, &mut rng).unwrap();
    let next = a.next_sending_keys().unwrap();
    assert_eq!(next.previous_counter, 3, "OMEMO 2 sends pn as a count");
    deliver(&mut b, &next, &mut rng).unwrap();

    // the same exchange under the libsignal profile yields different keys (labels differ)
    let mut rng2 = StdRng::seed_from_u64(1);
    let (mut a2, _) = pair(LIBSIGNAL_V3, false, &mut rng2);
    assert!(a2.next_sending_keys().unwrap().keys != sent[0].keys);
}

#[test]
fn libsignal_style_and_spec_style_interoperate() {
    // Alice initialized libsignal style, Bob spec style (and vice versa): same keys.
    let mut rng = StdRng::seed_from_u64(2);
    let sk = [3u8; 32];
    let spk = KeyPair::generate(&mut rng);
    let mut a = RatchetState::new_initiator(
        LIBSIGNAL_V3,
        sk,
        spk.public,
        Some([4; 32]),
        KeyPair::generate(&mut rng),
    )
    .unwrap();
    let mut b = RatchetState::new_responder(LIBSIGNAL_V3, sk, spk, None);
    for round in 0..5 {
        let k = a.next_sending_keys().unwrap();
        if round == 0 {
            assert_eq!(k.previous_counter, 0);
        }
        deliver(&mut b, &k, &mut rng).unwrap();
        let k = a.next_sending_keys().unwrap();
        deliver(&mut b, &k, &mut rng).unwrap();
        let r = b.next_sending_keys().unwrap();
        deliver(&mut a, &r, &mut rng).unwrap();
    }
    let k = a.next_sending_keys().unwrap();
    assert_eq!(
        k.previous_counter, 2,
        "the v3 profile sends the count, as python-oldmemo does (two messages per chain)"
    );
}

#[test]
fn previous_counter_caches_tail_of_old_chain_in_spec_profile() {
    let mut rng = StdRng::seed_from_u64(3);
    let (mut a, mut b) = pair(OMEMO2, false, &mut rng);
    let c1: Vec<_> = (0..3).map(|_| a.next_sending_keys().unwrap()).collect();
    deliver(&mut b, &c1[0], &mut rng).unwrap();
    let r = b.next_sending_keys().unwrap();
    deliver(&mut a, &r, &mut rng).unwrap();
    let c2 = a.next_sending_keys().unwrap();
    assert_eq!(c2.previous_counter, 3);
    deliver(&mut b, &c2, &mut rng).unwrap();
    assert_eq!(b.skipped_key_count(), 2, "c1[1], c1[2] cached from pn");
    deliver(&mut b, &c1[2], &mut rng).unwrap();
    deliver(&mut b, &c1[1], &mut rng).unwrap();
    assert_eq!(b.skipped_key_count(), 0);
    assert!(matches!(
        deliver(&mut b, &c1[1], &mut rng),
        Err(SignalError::DuplicateMessage { counter: 1 })
    ));
}

#[test]
fn omemo2_global_fifo_cap_and_jump_limit() {
    let mut rng = StdRng::seed_from_u64(4);
    let (mut a, mut b) = pair(OMEMO2, false, &mut rng);
    let c1: Vec<_> = (0..602).map(|_| a.next_sending_keys().unwrap()).collect();
    deliver(&mut b, &c1[600], &mut rng).unwrap();
    assert_eq!(b.skipped_key_count(), 600);
    let r = b.next_sending_keys().unwrap();
    deliver(&mut a, &r, &mut rng).unwrap();
    let c2: Vec<_> = (0..1002).map(|_| a.next_sending_keys().unwrap()).collect();
    // pn = 602 caches c1[601] too; 1001 ahead is over the limit
    assert!(matches!(
        deliver(&mut b, &c2[1001], &mut rng),
        Err(SignalError::TooFarInFuture { jump: 1001 })
    ));
    deliver(&mut b, &c2[500], &mut rng).unwrap();
    assert_eq!(b.skipped_key_count(), 1000);
    // 601 + 500 = 1101 cached, the oldest 101 of chain 1 evicted
    assert!(deliver(&mut b, &c1[100], &mut rng).is_err());
    deliver(&mut b, &c1[101], &mut rng).unwrap();
    deliver(&mut b, &c1[601], &mut rng).unwrap();
    deliver(&mut b, &c2[0], &mut rng).unwrap();
}

#[test]
fn libsignal_per_chain_cap() {
    let mut rng = StdRng::seed_from_u64(5);
    let (mut a, mut b) = pair(LIBSIGNAL_V3, true, &mut rng);
    let c: Vec<_> = (0..4001).map(|_| a.next_sending_keys().unwrap()).collect();
    deliver(&mut b, &c[2000], &mut rng).unwrap();
    deliver(&mut b, &c[4000], &mut rng).unwrap();
    assert_eq!(b.skipped_key_count(), 2000);
    assert!(matches!(
        deliver(&mut b, &c[0], &mut rng),
        Err(SignalError::DuplicateMessage { counter: 0 })
    ));
    deliver(&mut b, &c[1999], &mut rng).unwrap();
    deliver(&mut b, &c[3999], &mut rng).unwrap();
}

#[test]
fn state_bytes_roundtrip() {
    let mut rng = StdRng::seed_from_u64(6);
    let (mut a, mut b) = pair(OMEMO2, false, &mut rng);
    let c: Vec<_> = (0..5).map(|_| a.next_sending_keys().unwrap()).collect();
    deliver(&mut b, &c[4], &mut rng).unwrap();
    let bytes = b.to_bytes();
    let mut b2 = RatchetState::from_bytes(OMEMO2, &bytes).unwrap();
    assert_eq!(*b2.to_bytes(), *bytes);
    for k in &c[..4] {
        deliver(&mut b2, k, &mut rng).unwrap();
    }
    let r = b2.next_sending_keys().unwrap();
    deliver(&mut a, &r, &mut rng).unwrap();
    assert!(RatchetState::from_bytes(OMEMO2, &bytes[..10]).is_err());
}
