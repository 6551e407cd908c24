"""herder.actors — every actor. May import herder.store, never herder.runtime."""

from herder.actors._clock import Clock, FakeClock, SystemClock, TimerHandle

__all__ = ["Clock", "FakeClock", "SystemClock", "TimerHandle"]
