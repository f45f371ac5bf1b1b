"""What the tests and the benchmarks share: fakes of the engine and the memory probe
(`fakes`), the app factories and Pilot helpers (`pilot`), a crafted-GGUF writer
(`gguf_craft`) and a stand-in hub server (`hub_server`)."""
