"""Each family learns: a GAN's generator, trained against a frozen discriminator, makes D
score its fakes higher; the VAE and DDPM, trained on 8 fixed images, at least halve their
reconstruction or denoising error. A flipped sign in a loss fails these. Tiny models at 16 px."""

import pytest
import torch
import torch.nn.functional as F

from animegen.data.synth import render_faces
from animegen.models import registry
from animegen.training.config import make_config
from animegen.training.objective import TrainContext

pytestmark = pytest.mark.usefixtures("one_thread")


def build(family, **sets):
    torch.manual_seed(0)
    spec = registry.get(family)
    config = make_config(spec, "data", 16, "tiny", sets, seed=0)
    model = spec.model(config.model_config)
    return model, spec.objective(model, config.objective_config, TrainContext(torch.device("cpu")))


def faces(n):
    """n synthetic anime faces at 16 px, in [-1, 1], N x 3 x 16 x 16."""
    images, _ = render_faces(n, 16, seed=0)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def train(objective, real, steps):
    for step in range(steps):
        objective.train_step(real, step)


# A StyleGAN's D is frozen through its config; augmentation off, so that D's score is of the
# images themselves; a faster G, so that 10 steps show the trend.
STYLEGAN_FROZEN_D = {"d_lr": 0.0, "augment": "off", "g_lr": 0.01}
GAN_STEPS = {"dcgan": 30, "stylegan2": 10, "stylegan3-t": 10}


def generator_loss(family, objective, n=16):
    """G's loss, softplus(-D(G(z))), on a fixed draw of latents and noise (StyleGAN3's
    magnitude EMAs stay as they are: `synthesize` advances them only when asked)."""
    training_draws = objective.draws.get_state()
    objective.draws.manual_seed(123)
    if family == "dcgan":
        logits = objective.d(objective.model(objective.randn(n, objective.model.config.latent_dim)))
    else:
        logits = objective.discriminate(objective.synthesize(objective.generate_ws(n)))
    objective.draws.set_state(training_draws)  # training continues with its own numbers
    return F.softplus(-logits).mean().item()


@pytest.mark.parametrize("family", list(GAN_STEPS))
def test_generator_improves_against_a_frozen_discriminator(family):
    """Full training steps with D's learning rate 0: D stays as it was, and G's loss on a
    fixed batch of latents at least halves (D finds the fakes more real)."""
    _, objective = build(family, batch=4, **({} if family == "dcgan" else STYLEGAN_FROZEN_D))
    d = objective.nets["d" if family == "dcgan" else "D"]
    if family == "dcgan":  # one learning rate for both nets in the config: freeze D's optimizer
        for group in objective.optimizers["d"].param_groups:
            group["lr"] = 0.0
    d_before = [p.clone() for p in d.parameters()]
    before = generator_loss(family, objective)
    train(objective, faces(4), GAN_STEPS[family])
    assert all(torch.equal(a, b) for a, b in zip(d_before, d.parameters()))
    after = generator_loss(family, objective)
    assert after < before / 2, (before, after)


def test_vae_reconstruction_error_halves_on_8_images():
    """60 steps on 8 faces: reconstructing each from its posterior mean, the squared error
    falls below half that of the best single image (their mean), i.e. the latents carry each
    image, not just the average (the untrained decoder's error is about the latter)."""
    model, objective = build("vae", batch=8, lr=2e-3)
    real = faces(8)
    train(objective, real, 60)
    with torch.no_grad():
        recon = model.decoder(model.encode(real)[0])
    assert (recon - real).square().mean() < (real - real.mean(0)).square().mean() / 2


# Smaller than the tiny preset (no attention, 50 timesteps) and a larger learning rate: 20
# steps in about 2 CPU seconds.
SMALL_DDPM = {"base_channels": 16, "channel_mults": [1, 2], "attention_resolutions": [], "num_groups": 4,
              "time_embed_dim": 32, "timesteps": 50, "lr": 3e-3}


def test_ddpm_denoising_error_halves_on_8_images():
    """The eps-prediction error on the 8 training faces, at fixed noise and timesteps spread
    over the whole schedule, at least halves in 20 steps (untrained, the network predicts 0:
    error E[eps^2] = 1)."""
    model, objective = build("ddpm", batch=8, **SMALL_DDPM)
    real = faces(8)
    schedule = model.schedule
    g = torch.Generator().manual_seed(7)
    t = torch.linspace(0, schedule.num_steps - 1, 8).round().long()
    noise = torch.randn(real.shape, generator=g)
    x_t = schedule.alpha(t).float()[:, None, None, None] * real + schedule.sigma(t).float()[:, None, None, None] * noise

    def error():
        with torch.no_grad():
            return (model(x_t, t) - noise).square().mean().item()

    before = error()
    train(objective, real, 20)
    assert error() < before / 2, before
