from t2i.cli import main

main()
