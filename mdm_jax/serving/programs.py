"""A small cache of compiled sampling programs, least recently used out.

Each distinct (sampler, steps, eta, guidance, batch, threshold) is one jitted program that
compiles on its first call; kept here, a repeated setting runs without compiling. The
cache is bounded because each compiled program holds device and host memory: a server
that kept every setting anyone tried would grow without limit.
"""
import collections


def program_key(options, *extra):
    """What makes two requests need different programs (the prompt, label and seed are
    inputs of one program, not part of it)."""
    o = options
    return (o.sampler, o.num_steps, o.eta, o.guidance, o.batch_size, o.threshold) + extra


class ProgramCache:
    def __init__(self, size):
        if size < 1:
            raise ValueError(f"The program cache needs room for at least 1 program; got {size}.")
        self._size = size
        self._programs = collections.OrderedDict()

    def get(self, key, make):
        """(program, made): the cached program of key, else make() stored under it."""
        if key in self._programs:
            self._programs.move_to_end(key)
            return self._programs[key], False
        program = self._programs[key] = make()
        if len(self._programs) > self._size:
            self._programs.popitem(last=False)  # its executable is freed with it
        return program, True

    def __len__(self):
        return len(self._programs)
