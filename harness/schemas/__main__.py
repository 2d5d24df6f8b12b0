from bench.schemas import write_all

write_all()
