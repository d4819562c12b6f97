import unittest

from sizes import GIB, MIB, Invalid, OutOfRange, Rules, parse_quantity

R = Rules(maximum=GIB)


class SizesTest(unittest.TestCase):
    def test_create_rounds_raises_and_defaults(self):
        self.assertEqual(R.for_create(MIB + 1, 0), 2 * MIB)
        self.assertEqual(R.for_create(1, 0), MIB)
        self.assertEqual(R.for_create(0, 0), 64 * MIB)
        self.assertEqual(R.for_create(0, 10 * MIB + 5), 10 * MIB)

    def test_create_refuses_what_it_cannot_fit(self):
        with self.assertRaises(OutOfRange):
            R.for_create(MIB + 1, MIB + 2)
        with self.assertRaises(OutOfRange):
            R.for_create(2 * GIB, 0)
        with self.assertRaises(OutOfRange):
            R.for_create(0, 512 << 10)

    def test_expand(self):
        self.assertEqual(R.for_expand(None, 100 * MIB + 1, 0), 101 * MIB)
        self.assertEqual(R.for_expand(8 * MIB, 4 * MIB, 0), 8 * MIB)
        self.assertEqual(R.for_expand(8 * MIB, 0, 0), 8 * MIB)
        with self.assertRaises(Invalid):
            R.for_expand(None, 0, 0)

    def test_quantities(self):
        self.assertEqual(parse_quantity("10Gi"), 10 * GIB)
        self.assertEqual(parse_quantity("5M"), 5_000_000)
        self.assertIsNone(parse_quantity("Gi"))
        self.assertIsNone(parse_quantity("10 potatoes"))


if __name__ == "__main__":
    unittest.main()
