import jax


# Two fake CPU devices for the `jax.pmap` tests; must be set before JAX starts its backend.
jax.config.update("jax_num_cpu_devices", 2)
