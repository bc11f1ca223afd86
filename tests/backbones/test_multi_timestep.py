"""Self-attention averaged over several timesteps (DWC's option)."""

import torch


def test_a_list_of_timesteps_averages_the_single_timestep_maps(backbone, make_image):
    image = make_image(128, 192)
    latents = backbone.latents(image[None])
    single = [backbone.attention(latents, timestep=t)[0] for t in (100, 300, 700)]
    averaged = backbone.attention(latents, timestep=[100, 300, 700])[0]
    assert set(averaged) == set(single[0])
    for grid, maps in averaged.items():
        expected = sum(s[grid] for s in single) / 3
        torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
        rows = maps.reshape(maps.shape[0], -1).sum(1)
        torch.testing.assert_close(rows, torch.ones_like(rows), rtol=0, atol=1e-5)
    (enc,) = backbone.encode([image], features=False, attention=True, size=128,
                             attention_timestep=[100, 300, 700])
    assert enc.meta["attention_timestep"] == [100, 300, 700]
    direct = backbone.attention(backbone.latents(enc.image[None]), timestep=[100, 300, 700])[0]
    for grid, maps in enc.attention.items():
        torch.testing.assert_close(maps, direct[grid], rtol=1e-5, atol=1e-6)
